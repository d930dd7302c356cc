package spool

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/internal/dsnreport"
)

// The DSN outbox.
//
// A DSN is written to dsn/ before the failure it reports is recorded, in
// two files like a queued message: <id>.eml, the report, and <id>.json, its
// envelope (null sender, the original sender as recipient), which commits
// it. Then the Bouncer is given it; once the Bouncer returns nil the files
// are removed. When the Bouncer fails, the error and the attempt are
// recorded in the envelope and the DSN is tried again later, with a delay
// that doubles up to an hour. A DSN the Bouncer refuses permanently, or
// that could not be sent within MaxAge, is moved to dead/ and logged: it is
// never dropped silently.
//
// The report itself is written by internal/dsnreport, which pgqueue
// shares: queueDSN fills in a dsnreport.Report from the spool's records.

// queueDSN writes the DSN reporting failed (or relayed) recipients of env
// to the outbox.
// The caller holds the message's envelope lock.
func (s *Spool) queueDSN(env *envelopeFile, failed []dsnreport.Recipient, now time.Time) error {
	var headers []byte
	if f, err := openRegular(s.bodyPath(env.ID)); err == nil {
		headers, err = dsnreport.ReadHeaderSection(f, dsnreport.MaxReportedHeaders)
		f.Close()
		if err != nil {
			s.log.Warn("spool: cannot read the headers of a failed message for its DSN", "id", env.ID, "err", err)
		}
	} else {
		s.log.Warn("spool: cannot read the headers of a failed message for its DSN", "id", env.ID, "err", err)
	}
	id := newID(now)
	rep := &dsnreport.Report{
		ID: id, Hostname: s.opts.Hostname, Sender: env.From, MsgID: env.ID, EnvID: env.EnvID,
		Arrival: env.Received, Date: now, Rcpts: failed, Headers: headers,
	}
	if dsnreport.ReturnsFull(env.Ret, env.Body, env.Size, failed) {
		if body, err := openRegular(s.bodyPath(env.ID)); err == nil {
			defer body.Close()
			rep.Full, rep.EightBit = body, env.Body == odmr.Body8BitMIME
		} else {
			s.log.Warn("spool: cannot read a failed message to return it whole; returning its headers", "id", env.ID, "err", err)
		}
	}

	f, err := createTemp(s.path(tmpDir), "eml")
	if err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	defer f.Close() // the lock, held until the DSN is committed
	if _, err := tryLock(f); err != nil {
		os.Remove(f.Name())
		return err
	}
	cw := &countWriter{w: f}
	err = rep.Encode(cw)
	if err == nil {
		err = f.Sync()
	}
	emlPath := s.path(dsnDir, id+".eml")
	if err == nil {
		err = os.Rename(f.Name(), emlPath)
	}
	if err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("spool: writing DSN: %w", err)
	}
	de := &envelopeFile{
		Version: envelopeVersion, ID: id, From: "", Received: now, Size: cw.n,
		// The DSN's recipient, and its To: field, is the sender.
		UTF8: rep.UTF8(), Body: rep.BodyType(),
		Recipients: []recipientFile{{Addr: env.From, State: Queued}},
		ReportFor:  env.ID,
	}
	if err := de.write(s.path(tmpDir), s.path(dsnDir, id+".json")); err != nil {
		os.Remove(emlPath)
		return fmt.Errorf("spool: writing DSN: %w", err)
	}
	return nil
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// FlushBounces hands every DSN waiting in the outbox to the Bouncer now,
// ignoring the delay between retries, and returns how many it accepted.
// DSNs another session is sending are skipped. Without a Bouncer it does
// nothing. The first error from the Bouncer is returned; the DSNs stay in
// the outbox.
func (s *Spool) FlushBounces(ctx context.Context) (int, error) {
	if err := s.checkWritable(); err != nil {
		return 0, err
	}
	return s.flush(ctx, false)
}

// PendingBounces returns the number of DSNs waiting in the outbox.
func (s *Spool) PendingBounces() (int, error) {
	names, err := readNames(s.path(dsnDir))
	if err != nil {
		return 0, fmt.Errorf("spool: %w", err)
	}
	n := 0
	for _, name := range names {
		if id, ok := strings.CutSuffix(name, ".json"); ok && isID(id) {
			n++
		}
	}
	return n, nil
}

// flush sends the DSNs in the outbox; with backoff, only those due.
func (s *Spool) flush(ctx context.Context, backoff bool) (int, error) {
	if s.opts.Bouncer == nil {
		return 0, nil
	}
	s.flushMu.Lock()
	defer s.flushMu.Unlock()
	names, err := readNames(s.path(dsnDir))
	if err != nil {
		return 0, fmt.Errorf("spool: %w", err)
	}
	var ids []string
	for _, name := range names {
		if id, ok := strings.CutSuffix(name, ".json"); ok && isID(id) {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	sent := 0
	var first error
	for _, id := range ids {
		if err := ctx.Err(); err != nil {
			return sent, err
		}
		ok, err := s.sendDSN(ctx, id, backoff)
		if ok {
			sent++
		}
		if err != nil && first == nil {
			first = err
		}
	}
	return sent, first
}

// sendDSN hands one DSN to the Bouncer.
func (s *Spool) sendDSN(ctx context.Context, id string, backoff bool) (bool, error) {
	emlPath, jsonPath := s.path(dsnDir, id+".eml"), s.path(dsnDir, id+".json")
	lock, _, err := lockPath(emlPath)
	if lock == nil || err != nil {
		return false, err
	}
	defer lock.Close()
	de, err := readEnvelope(jsonPath, id)
	if isNotExist(err) {
		return false, nil // sent meanwhile
	} else if err != nil {
		s.logUnreadable(id, err)
		return false, nil
	}
	now := time.Now()
	if backoff && now.Before(de.NextAttempt) {
		return false, nil
	}
	rc := &de.Recipients[0]
	f, err := openRegular(emlPath)
	if err != nil {
		return false, fmt.Errorf("spool: %w", err)
	}
	err = s.opts.Bouncer.Bounce(ctx, de.envelope([]string{rc.Addr}), bufio.NewReader(f))
	f.Close()
	if err == nil {
		if err := os.Remove(jsonPath); err != nil {
			return false, fmt.Errorf("spool: %w", err)
		}
		syncDir(s.path(dsnDir))
		os.Remove(emlPath)
		return true, nil
	}
	if ctx.Err() != nil {
		return false, err
	}
	rc.Attempts++
	rc.LastAttempt, rc.LastError = now, recordError(err)
	if odmr.Permanent(err) || now.Sub(de.Received) >= s.opts.MaxAge {
		s.log.Error("spool: DSN could not be delivered; moved to the dead directory", "id", id, "to", rc.Addr,
			"for", de.ReportFor, "attempts", rc.Attempts, "err", err)
		rc.State, rc.Done = Failed, now
		if werr := de.write(s.path(tmpDir), s.path(deadDir, id+".json")); werr != nil {
			return false, fmt.Errorf("spool: %w", werr)
		}
		if werr := os.Rename(emlPath, s.path(deadDir, id+".eml")); werr != nil {
			return false, fmt.Errorf("spool: %w", werr)
		}
		os.Remove(jsonPath)
		return false, err
	}
	de.NextAttempt = now.Add(min(time.Minute<<min(rc.Attempts-1, 6), time.Hour))
	s.log.Warn("spool: DSN not accepted by the bouncer; will retry", "id", id, "to", rc.Addr,
		"attempts", rc.Attempts, "next", de.NextAttempt, "err", err)
	if werr := de.write(s.path(tmpDir), jsonPath); werr != nil {
		return false, fmt.Errorf("spool: %w", werr)
	}
	return false, err
}

// cleanOutbox removes what crashes left in the outbox: reports never
// committed, and envelopes of DSNs already moved to dead/.
func (s *Spool) cleanOutbox() {
	names, err := readNames(s.path(dsnDir))
	if err != nil {
		s.log.Warn("spool: cannot list the DSN outbox", "err", err)
		return
	}
	have := make(map[string]bool, len(names))
	for _, n := range names {
		have[n] = true
	}
	pending := 0
	for _, n := range names {
		id, ext, _ := strings.Cut(n, ".")
		if !isID(id) {
			continue
		}
		switch {
		case ext == "eml" && !have[id+".json"]:
			if f, _, err := lockPath(s.path(dsnDir, n)); f != nil && err == nil {
				if _, err := os.Stat(s.path(dsnDir, id+".json")); isNotExist(err) {
					os.Remove(s.path(dsnDir, n))
				}
				f.Close()
			}
		case ext == "json" && !have[id+".eml"]:
			if _, err := os.Stat(s.path(deadDir, id+".eml")); err == nil {
				os.Remove(s.path(dsnDir, n))
			} else {
				s.log.Error("spool: DSN envelope without its report; left in place", "id", id)
			}
		case ext == "json":
			pending++
		}
	}
	// A spool without a Bouncer that does no periodic work is a tool's
	// (a queue listing, an operator's hold): the DSNs are not its to
	// send, and a provider that has a Bouncer sends them. One that runs
	// its maintenance serves mail, and would keep them forever.
	if pending > 0 && s.opts.Bouncer == nil && s.opts.MaintenanceInterval > 0 {
		s.log.Warn("spool: DSNs wait in the outbox and none is sent: Options.Bouncer is nil; open the spool with a Bouncer to send them", "count", pending)
	}
}
