package spool

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Quarantine.
//
// A message whose body is missing, is not a regular file, or does not have
// the size its envelope recorded was damaged after it was committed (a
// disk error, a careless operator, a full disk at a restore). It cannot be
// delivered as it is, and leaving it queued would answer every ATRN for its
// domains with 250 and an empty session until it expires. So it is moved
// aside, whole, into quarantine/: <id>.json (the envelope), <id>.eml (the
// body, if any) and <id>.reason, a short text saying when and why. Its
// markers are removed, so HasMail no longer counts it, and it is logged at
// error level; List's caller finds it with Quarantined, and odmr-provider
// -list shows it. No DSN is sent: the mail is not lost, only held for the
// operator, who may repair the body and move both files back into queue/
// (Open restores the markers), or delete them.
//
// Damage is looked for where it costs nothing more than a stat: at Open,
// for every envelope read; when a batch leases a message; and when the
// body is opened for delivery.

const quarantineDir = "quarantine"

// checkBody returns why the body of the message whose envelope is env
// cannot be delivered, or nil.
func (s *Spool) checkBody(env *envelopeFile) error {
	fi, err := os.Lstat(s.bodyPath(env.ID))
	switch {
	case isNotExist(err):
		return errors.New("body file missing")
	case err != nil:
		return err
	case !fi.Mode().IsRegular():
		return fmt.Errorf("body is not a regular file (%v)", fi.Mode().Type())
	case fi.Size() != env.Size:
		return fmt.Errorf("body has %d bytes, its envelope says %d", fi.Size(), env.Size)
	}
	return nil
}

// stillQueued reports whether message id still has its envelope: a body
// that vanished with its envelope was completed by someone else, not
// damaged.
func (s *Spool) stillQueued(id string) bool {
	_, err := os.Lstat(s.envPath(id))
	return err == nil
}

// quarantine moves message id aside because of reason, removes its
// markers and logs it. The body goes first: an envelope without a body is
// found damaged again and finishes the move, while a body without an
// envelope would be taken for debris.
func (s *Spool) quarantine(env *envelopeFile, reason error) {
	id := env.ID
	qdir := s.path(quarantineDir)
	fail := func(err error) {
		s.log.Error("spool: damaged message cannot be quarantined; it stays in the queue", "id", id, "reason", reason, "err", err)
	}
	// The envelope lock, when the body is still a file that can hold it:
	// a session settling the message's other domains finishes first.
	if lock, err := lockWaiting(context.Background(), s.bodyPath(id)); err == nil {
		defer lock.Close()
	}
	if err := os.MkdirAll(qdir, dirPerm); err != nil {
		fail(err)
		return
	}
	if err := os.Rename(s.bodyPath(id), filepath.Join(qdir, id+".eml")); err != nil && !isNotExist(err) {
		fail(err)
		return
	}
	if err := os.Rename(s.envPath(id), filepath.Join(qdir, id+".json")); err != nil && !isNotExist(err) {
		fail(err)
		return
	}
	syncDir(s.path(queueDir))
	text := "quarantined " + time.Now().UTC().Format(time.RFC3339) + "\n" + damageReason(env, reason)
	if err := writeAtomic(s.path(tmpDir), filepath.Join(qdir, id+".reason"), []byte(text)); err != nil {
		s.log.Warn("spool: cannot write the reason of a quarantined message", "id", id, "err", err)
	}
	s.withdraw(id, env.allDirs())
	s.log.Error("spool: damaged message quarantined; it will not be delivered until an operator restores it",
		"id", id, "reason", reason, "dir", qdir)
}

// damageReason says why the message whose envelope is env is damaged,
// who sent it and to whom: the .reason file after its first line.
func damageReason(env *envelopeFile, reason error) string {
	var b strings.Builder
	fmt.Fprintf(&b, "reason: %s\nfrom: <%s>\n", reason, env.From)
	for _, r := range env.Recipients {
		fmt.Fprintf(&b, "to: <%s> %s\n", r.Addr, r.State)
	}
	return b.String()
}

// QuarantinedMessage describes a message moved aside because it was
// damaged.
type QuarantinedMessage struct {
	ID string
	// Reason is the text of its .reason file: when and why, the sender
	// and the recipients.
	Reason string
}

// Quarantined lists the messages in the spool's quarantine/ directory,
// oldest first. They are not queued: an operator decides what becomes of
// them (see the package documentation).
func (s *Spool) Quarantined() ([]QuarantinedMessage, error) {
	names, err := readNames(s.path(quarantineDir))
	if err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	seen := make(map[string]bool)
	var out []QuarantinedMessage
	for _, n := range names {
		id, _, _ := strings.Cut(n, ".")
		if !isID(id) || seen[id] {
			continue
		}
		seen[id] = true
		reason, err := readFileRegular(s.path(quarantineDir, id+".reason"), 64<<10)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			reason = []byte("unreadable reason: " + err.Error())
		}
		out = append(out, QuarantinedMessage{ID: id, Reason: string(reason)})
	}
	slices.SortFunc(out, func(a, b QuarantinedMessage) int { return strings.Compare(a.ID, b.ID) })
	return out, nil
}
