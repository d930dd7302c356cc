package spool

import (
	"context"

	"github.com/go-odmr/odmr/odmrtrace"
)

var _ odmrtrace.QueueStatser = (*Spool)(nil)

// QueueStats returns what is queued, per domain, sorted by domain, from
// the in-memory index: unlike [Spool.List] it reads nothing from disk, so
// a metrics exporter may call it often. The index follows this process's
// own changes at once and those of other processes sharing the directory
// at the periodic maintenance (see [Options.RefreshDomains]). It waits
// for the index Open builds (see [Spool.WaitIndexed]; [Spool.Indexed]
// says without waiting whether it is complete), then costs a pass over
// the domains. It implements [odmrtrace.QueueStatser].
func (s *Spool) QueueStats(ctx context.Context) ([]odmrtrace.QueueStats, error) {
	if err := s.checkOpen(); err != nil {
		return nil, err
	}
	if err := s.idx.wait(ctx); err != nil {
		return nil, err
	}
	stats := s.stats()
	out := make([]odmrtrace.QueueStats, len(stats))
	for i, d := range stats {
		out[i] = odmrtrace.QueueStats{Domain: d.Domain, Messages: d.Messages, Bytes: d.Bytes, Oldest: d.Oldest}
	}
	return out, nil
}
