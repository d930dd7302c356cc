package spool

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"slices"
	"strings"
)

// Inventory is what [Inspect] found in a spool.
type Inventory struct {
	// Domains is what is queued, per domain, sorted by domain, as
	// [Spool.List] returns it. A message for several domains is counted
	// in each.
	Domains []DomainStats
	// Messages counts the messages queued, each once, and Bytes adds up
	// the sizes of those whose envelope could be read.
	Messages int
	Bytes    int64
	// Held counts the messages held (Spool.Hold): they are not counted in
	// Domains, Messages and Bytes, and are not delivered until released.
	Held int
	// PendingBounces counts the DSNs waiting to be sent.
	PendingBounces int
	// Quarantined lists the messages in quarantine/, oldest first.
	Quarantined []QuarantinedMessage
	// Damaged lists the messages still in queue/ that are damaged: [Open]
	// moves them to quarantine/. Their Reason has no "quarantined" line.
	// They are not counted in Domains.
	Damaged []QuarantinedMessage
}

// ErrNotSpool is returned by [Inspect] for a directory that holds no spool.
var ErrNotSpool = errors.New("spool: not a spool directory")

// Inspect reads the spool in dir and reports what it holds, changing
// nothing: unlike [Open] it creates no directory or file, takes no lock,
// repairs no marker, removes no debris and quarantines no damaged message,
// so it may be run by an operator against a live spool or a copy on
// read-only media. A message whose domain marker is missing is counted as
// Open would count it after restoring the marker. A directory without the
// spool's layout file gives an error matching [ErrNotSpool]. log receives
// what cannot be read; nil means slog.Default().
func Inspect(dir string, log *slog.Logger) (*Inventory, error) {
	if !lockingSupported {
		return nil, errors.New("spool: file locking is not supported on this platform")
	}
	if log == nil {
		log = slog.Default()
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("%w: %s is not a directory", ErrNotSpool, dir)
	}
	s := &Spool{
		dir:      dir,
		log:      log,
		leases:   make(map[groupKey]*message),
		bad:      make(map[string]bool),
		readOnly: true,
	}
	s.idx.init()
	s.ctx, s.cancel = context.WithCancel(context.Background())
	defer s.cancel()
	if _, err := os.Lstat(s.path(layoutFile)); errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s has no %s", ErrNotSpool, dir, layoutFile)
	}
	if err := s.checkLayout(); err != nil {
		return nil, err
	}
	if err := s.buildNow(); err != nil {
		return nil, err
	}
	// Each message once, however many domains it is queued in; a damaged
	// one in none: Open would quarantine it.
	s.idx.mu.Lock()
	damaged := make(map[msgKey]bool, len(s.damaged))
	for _, m := range s.damaged {
		damaged[keyOf(m.ID)] = true
	}
	for dir, di := range s.idx.dirs {
		for k := range damaged {
			if _, ok := di.msgs[k]; ok {
				del(s.idx.dirs, change{key: k, dir: dir})
			}
		}
	}
	inv := &Inventory{Damaged: s.damaged, Held: s.held}
	seen := make(map[msgKey]bool)
	for _, di := range s.idx.dirs {
		for k, e := range di.msgs {
			if seen[k] {
				continue
			}
			seen[k] = true
			inv.Messages++
			if e.size >= 0 {
				inv.Bytes += e.size
			}
		}
	}
	s.idx.mu.Unlock()
	slices.SortFunc(inv.Damaged, func(a, b QuarantinedMessage) int { return strings.Compare(a.ID, b.ID) })
	inv.Domains = s.stats()
	if inv.PendingBounces, err = s.PendingBounces(); err != nil {
		return nil, err
	}
	if inv.Quarantined, err = s.Quarantined(); err != nil {
		return nil, err
	}
	return inv, nil
}
