package spool_test

import (
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/odmrtest"
	"github.com/go-odmr/odmr/spool"
)

// The provider conformance suite, run against odmr.Provider with a spool
// as its queue instead of the memory queue.
func TestProviderConformanceWithSpool(t *testing.T) {
	s, err := spool.Open(t.TempDir(), spool.Options{
		MaintenanceInterval: -1,
		Logger:              slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	_, cfg := odmrtest.NewProvider(t, func(p *odmr.Provider) { p.Queue = s })
	cfg.Enqueue = func(from string, to []string, body string) error {
		_, err := s.Enqueue(context.Background(), odmr.Envelope{From: from, To: to}, strings.NewReader(body))
		return err
	}
	odmrtest.TestProvider(t, cfg)
}
