package spool

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/go-odmr/odmr"
)

// settle records what happened to the queued recipients of message id in
// the locked groups: the results of a delivery, or their expiry. to, when
// not nil, limits it to the recipients handed out with the lease.
//
// It runs under the message's envelope lock, and in an order that a crash
// at any point leaves no recipient both done and queued, nor lost: first
// the DSN for the failures goes to the outbox, then the new envelope is
// committed (or, with nothing left queued, the envelope is removed, then
// the body), and last the markers of the groups left empty are removed. A
// crash between the first two steps means a second DSN later; between the
// last two, a stale marker that the next lease clears.
func (s *Spool) settle(ctx context.Context, id string, groups []heldGroup, to []string, results []odmr.RecipientResult, expire bool) error {
	lock, err := lockWaiting(ctx, s.bodyPath(id))
	if err != nil {
		return fmt.Errorf("spool: message %s: %w", id, err)
	}
	defer lock.Close()
	env, err := readEnvelope(s.envPath(id), id)
	if err != nil {
		return fmt.Errorf("spool: message %s: %w", id, err)
	}

	now := time.Now()
	dirs := make(map[string]bool, len(groups))
	for _, g := range groups {
		dirs[g.dir] = true
	}
	var leased map[string]bool
	if to != nil {
		leased = make(map[string]bool, len(to))
		for _, a := range to {
			leased[a] = true
		}
	}
	outcome := make(map[string]error, len(results))
	reported := make(map[string]bool, len(results))
	noDSN := make(map[string]bool)
	for _, r := range results {
		outcome[r.Recipient] = r.Err
		reported[r.Recipient] = true
		noDSN[r.Recipient] = r.NoDSN
	}
	dsn := env.dsn()
	tooOld := now.Sub(env.Received) >= s.opts.MaxAge

	var failed, relayed []reportRecipient
	changed := false
	for i := range env.Recipients {
		r := &env.Recipients[i]
		if r.State != Queued || !dirs[dirName(odmr.RecipientDomain(r.Addr))] || leased != nil && !leased[r.Addr] {
			continue
		}
		changed = true
		if expire {
			r.State, r.Done = Failed, now
			failed = append(failed, reportRecipient{
				addr: r.Addr, status: odmr.EnhancedCode{4, 4, 7}, diag: r.LastError.reply(),
				lastAttempt: r.LastAttempt, expired: true, age: now.Sub(env.Received),
			})
			continue
		}
		err := outcome[r.Addr]
		if !reported[r.Addr] {
			err = fmt.Errorf("spool: no result reported for %s", r.Addr)
		}
		switch {
		case err == nil:
			r.State, r.Done = Delivered, now
			if noDSN[r.Addr] && dsn.Notifies(r.Addr, odmr.NotifySuccess) {
				// RFC 3461 section 4.1: the receiver will not report, so
				// say that the message was relayed.
				relayed = append(relayed, withORcpt(reportRecipient{addr: r.Addr, action: "relayed", status: odmr.EnhancedCode{2, 0, 0}, lastAttempt: now}, dsn))
			}
		case odmr.Permanent(err):
			reply := odmr.AsError(err)
			r.State, r.Done, r.LastAttempt, r.LastError = Failed, now, now, recordError(err)
			failed = append(failed, reportRecipient{addr: r.Addr, status: statusFor(reply), diag: reply, lastAttempt: now})
		default:
			r.Attempts++
			r.LastAttempt, r.LastError = now, recordError(err)
			if tooOld {
				r.State, r.Done = Failed, now
				failed = append(failed, reportRecipient{
					addr: r.Addr, status: odmr.EnhancedCode{4, 4, 7}, diag: odmr.AsError(err),
					lastAttempt: now, expired: true, age: now.Sub(env.Received),
				})
			}
		}
	}
	if !changed {
		return nil
	}
	for _, f := range failed {
		if f.expired {
			s.log.Warn("spool: expired", "id", id, "to", f.addr, "age", f.age.Round(time.Second))
		}
	}

	if len(failed) > 0 {
		// RFC 3461 section 4.1: report only what NOTIFY asked for; say
		// what ORCPT and ENVID said.
		wanted, quiet := failed[:0:0], []string(nil)
		for _, f := range failed {
			if !dsn.Notifies(f.addr, odmr.NotifyFailure) {
				quiet = append(quiet, f.addr)
				continue
			}
			wanted = append(wanted, withORcpt(f, dsn))
		}
		if len(quiet) > 0 {
			s.log.Info("spool: recipients failed; their NOTIFY asks for no DSN", "id", id, "recipients", quiet)
		}
		failed = wanted
	}
	if len(failed) > 0 {
		if env.From == "" {
			addrs := make([]string, len(failed))
			for i, f := range failed {
				addrs[i] = f.addr
			}
			s.log.Info("spool: recipients failed; the sender is null, so no DSN is sent", "id", id, "recipients", addrs)
		} else if err := s.queueDSN(env, failed, now); err != nil {
			return err
		} else {
			s.log.Info("spool: bounce queued", "id", id, "to", env.From, "recipients", len(failed))
		}
	}
	if len(relayed) > 0 && env.From != "" {
		if err := s.queueDSN(env, relayed, now); err != nil {
			return err
		}
	}

	if env.queued() {
		if err := env.write(s.path(tmpDir), s.envPath(id)); err != nil {
			return fmt.Errorf("spool: %w", err)
		}
	} else {
		if err := os.Remove(s.envPath(id)); err != nil {
			return fmt.Errorf("spool: %w", err)
		}
		if err := syncDir(s.path(queueDir)); err != nil {
			return fmt.Errorf("spool: %w", err)
		}
		if err := os.Remove(s.bodyPath(id)); err != nil {
			s.log.Warn("spool: cannot remove body of completed message", "id", id, "err", err)
		}
	}
	var emptied []string
	for _, g := range groups {
		if !env.queuedIn(g.dir) {
			removeIfExists(s.markerPath(g.dir, id))
			emptied = append(emptied, g.dir)
		}
	}
	if !env.queued() {
		for dir := range env.allDirs() {
			emptied = append(emptied, dir)
		}
	}
	s.idx.remove(id, emptied...)
	if (len(failed) > 0 || len(relayed) > 0) && env.From != "" {
		s.kickBouncer()
	}
	return nil
}

// Expire gives up on the recipients that have been queued for longer than
// MaxAge: each fails with status 4.4.7 and, unless the sender is null, a
// DSN reports it. Recipients leased by a session are left to the session
// (Complete expires them if their delivery fails). It returns the number
// of messages it expired recipients of. The Spool runs it every
// MaintenanceInterval, and Next expires what it comes across.
func (s *Spool) Expire(ctx context.Context) (int, error) {
	if err := s.checkOpen(); err != nil {
		return 0, err
	}
	if err := s.refresh(nil); err != nil {
		return 0, fmt.Errorf("spool: %w", err)
	}
	n := 0
	for _, x := range s.idx.olderThan(time.Now().Add(-s.opts.MaxAge)) {
		if err := ctx.Err(); err != nil {
			return n, err
		}
		groups, err := s.lockGroups(x.id, x.dirs)
		if err != nil {
			return n, err
		}
		if len(groups) == 0 {
			continue
		}
		env, groups, _ := s.checkGroups(x.id, groups)
		if len(groups) == 0 {
			continue
		}
		if time.Since(env.Received) < s.opts.MaxAge {
			unlockGroups(groups)
			continue
		}
		err = s.settle(ctx, x.id, groups, nil, nil, true)
		unlockGroups(groups)
		if err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}

// withORcpt adds the recipient's ORCPT, if it gave one, to its report.
func withORcpt(rc reportRecipient, dsn *odmr.DSN) reportRecipient {
	if dsn != nil {
		if d, ok := dsn.Recipients[rc.addr]; ok {
			rc.orcptType, rc.orcpt = d.ORcptType, d.ORcpt
		}
	}
	return rc
}
