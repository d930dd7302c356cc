package spool

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/internal/dsnreport"
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
func (s *Spool) settle(ctx context.Context, id string, groups []heldGroup, to []string, results []odmr.RecipientResult, mode settleMode) error {
	lock, err := lockWaiting(ctx, s.bodyPath(id))
	if err != nil {
		return fmt.Errorf("spool: message %s: %w", id, err)
	}
	defer lock.Close()
	env, err := readEnvelope(s.envPath(id), id)
	if err != nil {
		return fmt.Errorf("spool: message %s: %w", id, err)
	}
	_, err = s.record(env, groups, to, results, mode)
	return err
}

// settleMode says what settle records.
type settleMode int

const (
	settleResults settleMode = iota // the results of a delivery
	settleExpire                    // expiry: every queued recipient fails with 4.4.7
	settleCancel                    // Spool.Bounce: every queued recipient fails with 5.0.0
)

// record is settle once the envelope lock is held and env read: it
// records what happened to the queued recipients of env in groups (all of
// them for settleCancel), and returns how many it settled.
func (s *Spool) record(env *envelopeFile, groups []heldGroup, to []string, results []odmr.RecipientResult, mode settleMode) (int, error) {
	st := newSettlement(env, groups, to, results, mode, s.opts.MaxAge)
	var failed, relayed []dsnreport.Recipient
	settled := 0
	for i := range env.Recipients {
		r := &env.Recipients[i]
		if !st.applies(r) {
			continue
		}
		settled++
		f, rel := st.settle(r)
		if f != nil {
			failed = append(failed, *f)
		}
		if rel != nil {
			relayed = append(relayed, *rel)
		}
	}
	if settled == 0 {
		return 0, nil
	}
	for _, f := range failed {
		if f.Expired {
			s.log.Warn("spool: expired", "id", env.ID, "to", f.Addr, "age", f.Age.Round(time.Second))
		}
	}
	failed = s.notifiedFailures(env, st.dsn, failed)
	if err := s.queueReports(env, failed, relayed, st.now); err != nil {
		return 0, err
	}
	if err := s.commitSettled(env, groups); err != nil {
		return 0, err
	}
	if (len(failed) > 0 || len(relayed) > 0) && env.From != "" {
		s.kickBouncer()
	}
	return settled, nil
}

// settlement is what record settles the recipients of a message with.
type settlement struct {
	mode    settleMode
	now     time.Time
	age     time.Duration                   // of the message
	tooOld  bool                            // older than MaxAge
	dirs    map[string]bool                 // of the locked groups
	leased  map[string]bool                 // the recipients leased; nil: all
	results map[string]odmr.RecipientResult // by recipient
	dsn     *odmr.DSN
}

func newSettlement(env *envelopeFile, groups []heldGroup, to []string, results []odmr.RecipientResult, mode settleMode, maxAge time.Duration) *settlement {
	now := time.Now()
	st := &settlement{
		mode: mode, now: now, age: now.Sub(env.Received), dsn: env.dsn(),
		dirs:    make(map[string]bool, len(groups)),
		results: make(map[string]odmr.RecipientResult, len(results)),
	}
	st.tooOld = st.age >= maxAge
	for _, g := range groups {
		st.dirs[g.dir] = true
	}
	if to != nil {
		st.leased = make(map[string]bool, len(to))
		for _, a := range to {
			st.leased[a] = true
		}
	}
	for _, r := range results {
		st.results[r.Recipient] = r
	}
	return st
}

// applies reports whether r is one of the recipients to settle.
func (st *settlement) applies(r *recipientFile) bool {
	switch {
	case r.State != Queued:
		return false
	case st.mode != settleCancel && !st.dirs[dirName(odmr.RecipientDomain(r.Addr))]:
		return false
	case st.leased != nil && !st.leased[r.Addr]:
		return false
	}
	return true
}

// settle records the result for r, and returns what to report of it: a
// failure, or a delivery to report as relayed; nil for none.
func (st *settlement) settle(r *recipientFile) (failed, relayed *dsnreport.Recipient) {
	now := st.now
	switch st.mode {
	case settleCancel:
		r.State, r.Done = Failed, now
		return &dsnreport.Recipient{
			Addr: r.Addr, Status: odmr.EnhancedCode{5, 0, 0}, Diag: r.LastError.reply(),
			LastAttempt: r.LastAttempt, Cancelled: true,
		}, nil
	case settleExpire:
		r.State, r.Done = Failed, now
		return &dsnreport.Recipient{
			Addr: r.Addr, Status: odmr.EnhancedCode{4, 4, 7}, Diag: r.LastError.reply(),
			LastAttempt: r.LastAttempt, Expired: true, Age: st.age,
		}, nil
	}
	res, reported := st.results[r.Addr]
	err := res.Err
	if !reported {
		err = fmt.Errorf("spool: no result reported for %s", r.Addr)
	}
	switch {
	case err == nil:
		r.State, r.Done = Delivered, now
		if res.NoDSN && st.dsn.Notifies(r.Addr, odmr.NotifySuccess) {
			// RFC 3461 section 4.1: the receiver will not report, so
			// say that the message was relayed.
			rel := withORcpt(dsnreport.Recipient{Addr: r.Addr, Action: "relayed", Status: odmr.EnhancedCode{2, 0, 0}, LastAttempt: now}, st.dsn)
			return nil, &rel
		}
	case odmr.Permanent(err):
		reply := odmr.AsError(err)
		r.State, r.Done, r.LastAttempt, r.LastError = Failed, now, now, recordError(err)
		return &dsnreport.Recipient{Addr: r.Addr, Status: dsnreport.StatusFor(reply), Diag: reply, LastAttempt: now}, nil
	default:
		r.Attempts++
		r.LastAttempt, r.LastError = now, recordError(err)
		if st.tooOld {
			r.State, r.Done = Failed, now
			return &dsnreport.Recipient{
				Addr: r.Addr, Status: odmr.EnhancedCode{4, 4, 7}, Diag: odmr.AsError(err),
				LastAttempt: now, Expired: true, Age: st.age,
			}, nil
		}
	}
	return nil, nil
}

// notifiedFailures returns the failures that NOTIFY asks a DSN for, with
// what ORCPT said (RFC 3461 section 4.1), and logs the others.
func (s *Spool) notifiedFailures(env *envelopeFile, dsn *odmr.DSN, failed []dsnreport.Recipient) []dsnreport.Recipient {
	if len(failed) == 0 {
		return failed
	}
	wanted, quiet := failed[:0:0], []string(nil)
	for _, f := range failed {
		if !dsn.Notifies(f.Addr, odmr.NotifyFailure) {
			quiet = append(quiet, f.Addr)
			continue
		}
		wanted = append(wanted, withORcpt(f, dsn))
	}
	if len(quiet) > 0 {
		s.log.Info("spool: recipients failed; their NOTIFY asks for no DSN", "id", env.ID, "recipients", quiet)
	}
	return wanted
}

// queueReports puts the DSNs for the failed and the relayed recipients
// in the outbox, unless the sender is null.
func (s *Spool) queueReports(env *envelopeFile, failed, relayed []dsnreport.Recipient, now time.Time) error {
	if len(failed) > 0 {
		if env.From == "" {
			addrs := make([]string, len(failed))
			for i, f := range failed {
				addrs[i] = f.Addr
			}
			s.log.Info("spool: recipients failed; the sender is null, so no DSN is sent", "id", env.ID, "recipients", addrs)
		} else if err := s.queueDSN(env, failed, now); err != nil {
			return err
		} else {
			s.log.Info("spool: bounce queued", "id", env.ID, "to", env.From, "recipients", len(failed))
		}
	}
	if len(relayed) > 0 && env.From != "" {
		return s.queueDSN(env, relayed, now)
	}
	return nil
}

// commitSettled commits the settled envelope, or removes the message when
// nothing is left queued, then removes the markers of the groups left
// empty.
func (s *Spool) commitSettled(env *envelopeFile, groups []heldGroup) error {
	id := env.ID
	if env.queued() {
		if err := env.write(s.path(tmpDir), s.envPath(id)); err != nil {
			return fmt.Errorf("spool: %w", err)
		}
	} else if err := s.removeMessage(id, "completed"); err != nil {
		return err
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
	return nil
}

// removeMessage removes the envelope and then the body of message id,
// which is what (completed or deleted) says in the log. The envelope's
// removal is the commit: a crash after it leaves a body without an
// envelope, which Open removes.
func (s *Spool) removeMessage(id, what string) error {
	if err := os.Remove(s.envPath(id)); err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	if err := syncDir(s.path(queueDir)); err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	if err := os.Remove(s.bodyPath(id)); err != nil {
		s.log.Warn("spool: cannot remove body of "+what+" message", "id", id, "err", err)
	}
	return nil
}

// Expire gives up on the recipients that have been queued for longer than
// MaxAge: each fails with status 4.4.7 and, unless the sender is null, a
// DSN reports it. Recipients leased by a session are left to the session
// (Complete expires them if their delivery fails). It returns the number
// of messages it expired recipients of. The Spool runs it every
// MaintenanceInterval, and Next expires what it comes across. It finds
// the old messages in the index, looking only at the domains whose oldest
// message is older than MaxAge, and waits for the index Open builds.
func (s *Spool) Expire(ctx context.Context) (int, error) {
	if err := s.checkWritable(); err != nil {
		return 0, err
	}
	if err := s.idx.wait(ctx); err != nil {
		return 0, err
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
		err = s.settle(ctx, x.id, groups, nil, nil, settleExpire)
		unlockGroups(groups)
		if err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}

// withORcpt adds the recipient's ORCPT, if it gave one, to its report.
func withORcpt(rc dsnreport.Recipient, dsn *odmr.DSN) dsnreport.Recipient {
	if dsn != nil {
		if d, ok := dsn.Recipients[rc.Addr]; ok {
			rc.ORcptType, rc.ORcpt = d.ORcptType, d.ORcpt
		}
	}
	return rc
}
