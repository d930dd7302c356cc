package odmr

import (
	"log/slog"
	"os"
)

// hostnameOr returns name, or the system's host name, or "localhost".
func hostnameOr(name string) string {
	if name != "" {
		return name
	}
	if h, err := os.Hostname(); err == nil && h != "" {
		return h
	}
	return "localhost"
}

// loggerOr returns l, or slog.Default() for nil.
func loggerOr(l *slog.Logger) *slog.Logger {
	if l != nil {
		return l
	}
	return slog.Default()
}
