package main

import (
	"context"
	"log/slog"
	"strings"
)

// lineLog is a writer that makes each line written to it a log record at
// level, its text the message.
type lineLog struct {
	log   *slog.Logger
	level slog.Level
}

func (w lineLog) Write(p []byte) (int, error) {
	for line := range strings.SplitSeq(strings.TrimSuffix(string(p), "\n"), "\n") {
		w.log.Log(context.Background(), w.level, line)
	}
	return len(p), nil
}
