// Package logfmt builds the example programs' loggers from their
// -log-format flag, and holds what the programs share in writing their
// logs.
package logfmt

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"syscall"
)

// Check returns an error unless format is "text" or "json".
func Check(format string) error {
	switch format {
	case "text", "json":
		return nil
	}
	return fmt.Errorf("-log-format %q: want text or json", format)
}

// New returns a logger writing records of level and above to w: as
// key=value text for "text" (or "", or anything Check refuses), as one
// JSON object a line for "json".
func New(w io.Writer, format string, level slog.Level) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// LockedWriter serializes the writes to W, which come from several
// goroutines: a logger's, a debug transcript's, a program's own lines.
type LockedWriter struct {
	W  io.Writer
	mu sync.Mutex
}

func (l *LockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.W.Write(p)
}

// SignalName names a signal the programs catch the way kill(1) and the
// documentation do (SIGTERM, not Go's "terminated").
func SignalName(s os.Signal) string {
	switch s {
	case syscall.SIGTERM:
		return "SIGTERM"
	case syscall.SIGINT:
		return "SIGINT"
	case syscall.SIGHUP:
		return "SIGHUP"
	}
	return s.String()
}
