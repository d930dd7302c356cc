// Package logfmt builds the example programs' loggers from their
// -log-format flag.
package logfmt

import (
	"fmt"
	"io"
	"log/slog"
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
