package spool

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"
	"strings"

	"github.com/go-odmr/odmr/queueadmin"
)

// Queue administration.
//
// The operator's commands ([queueadmin.Admin]) follow the rules of the
// deliveries, so that they are safe while providers use the spool: each
// takes the message's envelope lock (its body) for its read-modify-write,
// and the commands that end a message (Delete, Bounce) lock its markers
// too, without waiting, and refuse with queueadmin.ErrBusy a message that
// a session has leased. A held message keeps its recipients queued in the
// envelope, which says "held", and has no markers: HasMail, Claim, Expire
// and the quotas do not see it. Open does not restore its markers; Release
// does. A held message does not expire: once released, it expires at the
// next lease if it is older than MaxAge.

var _ queueadmin.Admin = (*Spool)(nil)

// Messages lists the messages with recipients queued, held ones included,
// oldest first. It reads every envelope from disk, so it sees what other
// processes did. Envelopes that cannot be read are logged and left out.
//
// A message a session is delivering is listed, with Delivering set. It
// takes no lock to find out, so that a session does not pass over the
// message a listing looks at: it asks this Spool's leases and, on Linux,
// the kernel's table of locks (/proc/locks), which shows the leases of
// the processes in the caller's PID namespace; elsewhere only this
// Spool's own leases are marked.
func (s *Spool) Messages(ctx context.Context) ([]queueadmin.Message, error) {
	if err := s.checkOpen(); err != nil {
		return nil, err
	}
	names, err := readNames(s.path(queueDir))
	if err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	leases := s.leaseView()
	var out []queueadmin.Message
	for _, n := range names {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		id, ok := strings.CutSuffix(n, ".json")
		if !ok || !isID(id) {
			continue
		}
		env, err := readEnvelope(s.envPath(id), id)
		if isNotExist(err) {
			continue // completed meanwhile
		} else if err != nil {
			s.logUnreadable(id, err)
			continue
		}
		if env.queued() {
			m := queuedMessage(env)
			m.Delivering = leases.delivering(env)
			out = append(out, m)
		}
	}
	slices.SortFunc(out, func(a, b queueadmin.Message) int {
		return cmp.Or(a.Envelope.Received.Compare(b.Envelope.Received), strings.Compare(a.Envelope.ID, b.Envelope.ID))
	})
	return out, nil
}

// queuedMessage describes env for queueadmin.Admin: To holds the recipients
// still queued.
func queuedMessage(env *envelopeFile) queueadmin.Message {
	var qm queueadmin.Message
	var to []string
	for _, r := range env.Recipients {
		if r.State != Queued {
			continue
		}
		to = append(to, r.Addr)
		qm.Recipients = append(qm.Recipients, queueadmin.Recipient{
			Addr: r.Addr, Attempts: r.Attempts, LastAttempt: r.LastAttempt, LastError: r.LastError.err(),
		})
	}
	qm.Envelope = env.envelope(to)
	qm.Held = env.Held
	return qm
}

// errNoMessage says that id names no queued message.
func errNoMessage(id string) error {
	return fmt.Errorf("spool: no message %q: %w", id, fs.ErrNotExist)
}

// readQueued reads the envelope of message id, which must have recipients
// queued.
func (s *Spool) readQueued(id string) (*envelopeFile, error) {
	if !isID(id) {
		return nil, errNoMessage(id)
	}
	env, err := readEnvelope(s.envPath(id), id)
	if isNotExist(err) || err == nil && !env.queued() {
		return nil, errNoMessage(id)
	} else if err != nil {
		return nil, err
	}
	return env, nil
}

// Message describes message id as read from disk, with Delivering set
// as Messages sets it.
func (s *Spool) Message(ctx context.Context, id string) (queueadmin.Message, error) {
	if err := s.checkOpen(); err != nil {
		return queueadmin.Message{}, err
	}
	leases := s.leaseView()
	env, err := s.readQueued(id)
	if err != nil {
		return queueadmin.Message{}, err
	}
	m := queuedMessage(env)
	m.Delivering = leases.delivering(env)
	return m, nil
}

// OpenMessage returns the body of message id, as it is delivered.
func (s *Spool) OpenMessage(ctx context.Context, id string) (io.ReadCloser, error) {
	if err := s.checkOpen(); err != nil {
		return nil, err
	}
	if _, err := s.readQueued(id); err != nil {
		return nil, err
	}
	f, err := openRegular(s.bodyPath(id))
	if isNotExist(err) {
		return nil, errNoMessage(id)
	} else if err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	return f, nil
}

// lockMessage takes the envelope lock of message id and reads its
// envelope, which must have recipients queued. The caller closes the lock.
func (s *Spool) lockMessage(ctx context.Context, id string) (*os.File, *envelopeFile, error) {
	if err := s.checkWritable(); err != nil {
		return nil, nil, err
	}
	if !isID(id) {
		return nil, nil, errNoMessage(id)
	}
	lock, err := lockWaiting(ctx, s.bodyPath(id))
	if isNotExist(err) {
		return nil, nil, errNoMessage(id)
	} else if err != nil {
		return nil, nil, err
	}
	env, err := s.readQueued(id)
	if err != nil {
		lock.Close()
		return nil, nil, err
	}
	return lock, env, nil
}

// lockMarkers locks, without waiting, every marker env's message has; a
// marker a session holds gives queueadmin.ErrBusy.
func (s *Spool) lockMarkers(env *envelopeFile) ([]heldGroup, error) {
	var groups []heldGroup
	for dir := range env.allDirs() {
		f, busy, err := lockPath(s.markerPath(dir, env.ID))
		if err == nil && busy {
			err = queueadmin.Busy(env.ID, "try again when the session is over")
		}
		if err != nil {
			unlockGroups(groups)
			return nil, err
		}
		if f != nil {
			groups = append(groups, heldGroup{dir, f})
		}
	}
	return groups, nil
}

// Delete removes message id and its markers; no DSN is sent. A message a
// session is delivering is refused with an error matching
// queueadmin.ErrBusy.
func (s *Spool) Delete(ctx context.Context, id string) error {
	lock, env, err := s.lockMessage(ctx, id)
	if err != nil {
		return err
	}
	defer lock.Close()
	groups, err := s.lockMarkers(env)
	if err != nil {
		return err
	}
	defer unlockGroups(groups)
	if err := s.removeMessage(id, "deleted"); err != nil {
		return err
	}
	s.withdraw(id, env.allDirs())
	s.log.Info("spool: deleted by the operator", "id", id, "from", env.From, "to", queuedMessage(env).Envelope.To)
	return nil
}

// Bounce fails the recipients of message id still queued, held or not,
// with status 5.0.0, and sends the sender a DSN through the outbox and
// the Bouncer, as for any failure (the NOTIFY of each recipient and a
// null sender are honoured). A message a session is delivering is refused
// with an error matching queueadmin.ErrBusy.
func (s *Spool) Bounce(ctx context.Context, id string) error {
	lock, env, err := s.lockMessage(ctx, id)
	if err != nil {
		return err
	}
	defer lock.Close()
	groups, err := s.lockMarkers(env)
	if err != nil {
		return err
	}
	defer unlockGroups(groups)
	to := queuedMessage(env).Envelope.To
	if _, err := s.record(env, groups, nil, nil, settleCancel); err != nil {
		return err
	}
	s.log.Info("spool: bounced by the operator", "id", id, "from", env.From, "to", to)
	return nil
}

// Hold keeps message id queued but offers it to no session until Release:
// its markers are removed. A session delivering it meanwhile finishes; the
// recipients it does not deliver stay queued, and held.
func (s *Spool) Hold(ctx context.Context, id string) error {
	lock, env, err := s.lockMessage(ctx, id)
	if err != nil {
		return err
	}
	defer lock.Close()
	if env.Held {
		return nil
	}
	dirs := env.queuedDirs()
	env.Held = true
	if err := env.write(s.path(tmpDir), s.envPath(id)); err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	// A marker left by a crash here is stale: the next lease removes it.
	s.withdraw(id, dirs)
	s.log.Info("spool: held by the operator", "id", id)
	return nil
}

// Release offers a held message id to sessions again.
func (s *Spool) Release(ctx context.Context, id string) error {
	lock, env, err := s.lockMessage(ctx, id)
	if err != nil {
		return err
	}
	defer lock.Close()
	if !env.Held {
		return nil
	}
	env.Held = false
	if err := env.write(s.path(tmpDir), s.envPath(id)); err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	// A marker a crash keeps from being made here is restored by Open.
	var dirs []string
	var errs []error
	for dir := range env.queuedDirs() {
		if err := s.addMarker(dir, id); err != nil {
			errs = append(errs, err)
			continue
		}
		dirs = append(dirs, dir)
	}
	slices.Sort(dirs)
	s.idx.add(id, infoOf(env), dirs)
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("spool: message %s released, but not offered until the spool is opened again: %w", id, err)
	}
	s.log.Info("spool: released by the operator", "id", id)
	return nil
}

// withdraw removes the markers of message id in dirs, and the message
// from the index there: no session is offered it in those domains.
func (s *Spool) withdraw(id string, dirs map[string]string) {
	list := make([]string, 0, len(dirs))
	for dir := range dirs {
		removeIfExists(s.markerPath(dir, id))
		list = append(list, dir)
	}
	s.idx.remove(id, list...)
}

// addMarker creates the marker of id in dir, if missing.
func (s *Spool) addMarker(dir, id string) error {
	if err := os.MkdirAll(s.path(domainsDir, dir), dirPerm); err != nil {
		return err
	}
	f, err := os.OpenFile(s.markerPath(dir, id), os.O_WRONLY|os.O_CREATE|os.O_EXCL, filePerm)
	if errors.Is(err, fs.ErrExist) {
		return nil
	} else if err != nil {
		return err
	}
	return f.Close()
}
