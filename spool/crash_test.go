package spool

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/go-odmr/odmr"
)

// The crash test runs an enqueuing process and a delivering process on one
// spool, kills both with SIGKILL at random moments, many times over, and
// checks after each round and at the end that:
//
//   - every message whose Enqueue returned nil is queued, or delivered;
//   - no recipient is delivered again once its Complete returned nil;
//   - every recipient whose failure was recorded has a DSN;
//   - no body is ever read partial (each carries a checksum);
//   - the leases of the killed processes do not keep anything: the queue
//     drains completely at the end.
//
// The children report on stdout, one write per event, so an event is
// seen whole or not at all:
//
//	ENQ id rcpt,rcpt     Enqueue returned nil
//	GOT id rcpt,rcpt     a message was leased and read whole
//	DONE id rcpt=ok|fail|temp,...   Complete returned nil
//	BAD id reason        a body failed its checksum
//
// and, before any of those, READY once the spool is open, so that the
// parent starts the time to the kill when the child starts working, not
// when the process starts: on a loaded machine starting takes longer than
// many a round.

var crashDomains = []string{"a.test", "b.test"}

func runChild(mode, dir, seed string) error {
	n, _ := strconv.ParseUint(seed, 10, 64)
	rng := rand.New(rand.NewPCG(n, uint64(os.Getpid())))
	s, err := Open(dir, Options{
		Hostname:            "crash.test",
		MaintenanceInterval: -1,
		Bouncer:             DirBouncer{Dir: filepath.Join(dir, "..", "bounces")},
		Logger:              slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		return err
	}
	childReport("READY")
	switch mode {
	case "enqueue":
		return childEnqueue(s, rng)
	case "deliver":
		return childDeliver(s, rng)
	}
	return fmt.Errorf("unknown mode %q", mode)
}

func childReport(format string, args ...any) {
	os.Stdout.WriteString(fmt.Sprintf(format, args...) + "\n")
}

func childEnqueue(s *Spool, rng *rand.Rand) error {
	pid := os.Getpid()
	for i := 0; ; i++ {
		var to []string
		for j, d := range crashDomains {
			if rng.IntN(3) > 0 || j == len(crashDomains)-1 && len(to) == 0 {
				local := fmt.Sprintf("u%d-%d-%d", pid, i, j)
				if rng.IntN(10) == 0 {
					local = "bad-" + local
				}
				to = append(to, local+"@"+d)
			}
		}
		size := 1 + rng.IntN(8<<10)
		if rng.IntN(4) == 0 {
			size = 64<<10 + rng.IntN(448<<10)
		}
		body := make([]byte, 0, size+size/64)
		for len(body) < size {
			line := make([]byte, 1+rng.IntN(76))
			for k := range line {
				line[k] = byte('!' + rng.IntN(94))
			}
			body = append(append(body, line...), '\r', '\n')
		}
		msg := checksummed(fmt.Sprintf("%d/%d", pid, i), body)
		id, err := s.Enqueue(context.Background(), odmr.Envelope{From: "sender@origin.test", To: to}, strings.NewReader(msg))
		if err != nil {
			return err
		}
		childReport("ENQ %s %s", id, strings.Join(to, ","))
	}
}

func childDeliver(s *Spool, rng *rand.Rand) error {
	ctx := context.Background()
	for {
		domains := crashDomains
		if rng.IntN(2) == 0 {
			domains = crashDomains[rng.IntN(len(crashDomains)):][:1]
		}
		b, err := s.Claim(ctx, domains)
		if err != nil {
			return err
		}
		n := 0
		for {
			m, err := b.Next(ctx)
			if errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				return err
			}
			n++
			env := m.Envelope()
			rc, err := m.Open()
			if err != nil {
				return err
			}
			data, err := io.ReadAll(rc)
			rc.Close()
			if err != nil {
				return err
			}
			if err := verifyChecksum(string(data)); err != nil {
				childReport("BAD %s %v", env.ID, err)
			}
			childReport("GOT %s %s", env.ID, strings.Join(env.To, ","))
			var res []odmr.RecipientResult
			var outcomes []string
			for _, r := range env.To {
				switch {
				case strings.HasPrefix(r, "bad-"):
					res = append(res, odmr.RecipientResult{Recipient: r, Err: errUnknownUser})
					outcomes = append(outcomes, r+"=fail")
				case rng.IntN(6) == 0:
					res = append(res, odmr.RecipientResult{Recipient: r, Err: errMailboxBusy})
					outcomes = append(outcomes, r+"=temp")
				default:
					res = append(res, odmr.RecipientResult{Recipient: r})
					outcomes = append(outcomes, r+"=ok")
				}
			}
			if err := m.Complete(ctx, res); err != nil {
				return err
			}
			childReport("DONE %s %s", env.ID, strings.Join(outcomes, ","))
			if rng.IntN(10) == 0 {
				s.FlushBounces(ctx)
			}
		}
		b.Close()
		if n == 0 {
			// Pacing, not a wait for an event: the mail comes from
			// another process, which no call of this one can wait on,
			// and an empty spool would otherwise be claimed in a busy
			// loop. Nothing is measured against it.
			time.Sleep(time.Millisecond)
		}
	}
}

// crashLedger is what the parent learned from its children.
type crashLedger struct {
	enqueued map[string][]string // acknowledged messages
	final    map[string]string   // "id rcpt" -> ok|fail, from DONE
	got      map[string]int      // "id rcpt" -> deliveries seen
	gotAfter map[string]int      // deliveries seen after a final DONE
	open     map[string]bool     // GOT without its DONE yet
	failed   map[string]bool     // "id rcpt" failed permanently
	temp     int                 // temporary failures reported
	bad      []string
	events   int
}

func newLedger() *crashLedger {
	return &crashLedger{
		enqueued: map[string][]string{}, final: map[string]string{}, got: map[string]int{},
		gotAfter: map[string]int{}, open: map[string]bool{}, failed: map[string]bool{},
	}
}

// record applies one line of a child's report.
func (l *crashLedger) record(line string) {
	f := strings.Fields(line)
	if len(f) < 3 {
		return
	}
	l.events++
	switch f[0] {
	case "ENQ":
		l.enqueued[f[1]] = strings.Split(f[2], ",")
	case "GOT":
		for _, r := range strings.Split(f[2], ",") {
			k := f[1] + " " + r
			l.got[k]++
			l.open[k] = true
			if l.final[k] != "" {
				l.gotAfter[k]++
			}
		}
	case "DONE":
		for _, o := range strings.Split(f[2], ",") {
			r, outcome, _ := strings.Cut(o, "=")
			k := f[1] + " " + r
			l.open[k] = false
			if outcome == "temp" {
				l.temp++
				continue
			}
			if l.final[k] != "" {
				l.gotAfter[k]++ // completed twice
			}
			l.final[k] = outcome
			if outcome == "fail" {
				l.failed[k] = true
			}
		}
	case "BAD":
		l.bad = append(l.bad, line)
	}
}

// runChildFor starts the test binary in mode and kills it with SIGKILL
// d after it is ready, returning the complete lines it wrote after
// READY.
func runChildFor(t *testing.T, mode, dir string, seed uint64, d time.Duration) []string {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childModeEnv+"="+mode, childDirEnv+"="+dir, childSeedEnv+"="+strconv.FormatUint(seed, 10))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	var lines []string
	ready := make(chan struct{})
	read := make(chan struct{})
	go func() {
		defer close(read)
		br := bufio.NewReader(out)
		for started := false; ; {
			line, err := br.ReadString('\n')
			if err != nil {
				return // a line cut by the kill is not an event
			}
			if !started && line == "READY\n" {
				started = true
				close(ready)
				continue
			}
			lines = append(lines, strings.TrimSuffix(line, "\n"))
		}
	}()
	select {
	case <-ready:
		// The kill lands a random d into the child's work on purpose:
		// it is the crash under test, not a wait for anything.
		time.Sleep(d)
	case <-read:
		// The child ended before it was ready; Wait says why.
	}
	cmd.Process.Signal(syscall.SIGKILL)
	<-read
	err = cmd.Wait()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("%s child ended by itself (%v): %s", mode, err, stderr.String())
	}
	return lines
}

func TestCrashRecovery(t *testing.T) {
	rounds := 40
	if testing.Short() {
		rounds = 8
	}
	base := t.TempDir()
	dir := filepath.Join(base, "spool")
	bouncesDir := filepath.Join(base, "bounces")
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 0))
	l := newLedger()

	// The spool must exist before the first child opens it; opening is
	// not what is under test.
	s, err := Open(dir, Options{MaintenanceInterval: -1})
	require.NoError(t, err)
	s.Close()

	// What the kills interrupted: files being written, and bodies whose
	// envelope was never committed, counted after each round.
	tmpDebris := map[string]bool{}
	uncommitted := 0
	countDebris := func() {
		names, _ := readNames(filepath.Join(dir, tmpDir))
		for _, n := range names {
			tmpDebris[n] = true
		}
		inQueue, _ := readNames(filepath.Join(dir, queueDir))
		for _, n := range inQueue {
			if id, ok := strings.CutSuffix(n, ".eml"); ok && !slices.Contains(inQueue, id+".json") {
				uncommitted++
			}
		}
	}
	for round := range rounds {
		// Mostly both at once; sometimes one alone, so that a backlog
		// builds up or is worked off; the last round leaves mail queued.
		enq, del := true, true
		switch r := rng.IntN(5); {
		case round == rounds-1 || r == 0:
			del = false
		case r == 1:
			enq = false
		}
		var wg sync.WaitGroup
		var enqLines, delLines []string
		enqFor := time.Duration(20+rng.IntN(250)) * time.Millisecond
		delFor := time.Duration(20+rng.IntN(250)) * time.Millisecond
		if enq {
			wg.Go(func() { enqLines = runChildFor(t, "enqueue", dir, seed+uint64(2*round), enqFor) })
		}
		if del {
			wg.Go(func() { delLines = runChildFor(t, "deliver", dir, seed+uint64(2*round+1), delFor) })
		}
		wg.Wait()
		// The enqueuer's acknowledgements first: a message is only
		// delivered after its Enqueue returned.
		for _, line := range enqLines {
			l.record(line)
		}
		for _, line := range delLines {
			l.record(line)
		}
		countDebris()
	}

	defer func(g time.Duration) { tmpGrace = g }(tmpGrace)
	tmpGrace = 0 // no writer is alive any more

	// Before draining: every acknowledged recipient is either settled or
	// still queued.
	s, err = Open(dir, Options{Hostname: "crash.test", MaintenanceInterval: -1, Bouncer: DirBouncer{Dir: bouncesDir},
		Logger: slog.New(slog.NewTextHandler(t.Output(), nil))})
	require.NoError(t, err)
	defer s.Close()
	queued := 0
	unacked := map[string]bool{}
	for id, rcpts := range l.enqueued {
		info, err := s.Stat(id)
		state := map[string]State{}
		if err == nil {
			for _, r := range info.Recipients {
				state[r.Addr] = r.State
			}
		} else {
			require.ErrorIs(t, err, fs.ErrNotExist)
		}
		for _, r := range rcpts {
			k := id + " " + r
			switch {
			case l.final[k] != "":
				assert.NotEqual(t, Queued, state[r], "%s settled but queued again", k)
			case state[r] == Queued:
				queued++
			case l.open[k]:
				// Complete ran and the process died before it could say
				// so: the last delivery read it and settled it.
				unacked[k] = true
			default:
				t.Errorf("%s was accepted and is lost", k)
			}
		}
	}

	// Drain what is left; everything must come out, whole.
	ctx := context.Background()
	b, err := s.Claim(ctx, crashDomains)
	require.NoError(t, err)
	drained := 0
	for {
		m, err := b.Next(ctx)
		if errors.Is(err, io.EOF) {
			break
		}
		require.NoError(t, err)
		env := m.Envelope()
		rc, err := m.Open()
		require.NoError(t, err)
		data, err := io.ReadAll(rc)
		rc.Close()
		require.NoError(t, err)
		if err := verifyChecksum(string(data)); err != nil {
			l.bad = append(l.bad, env.ID+" "+err.Error())
		}
		l.record("GOT " + env.ID + " " + strings.Join(env.To, ","))
		var res []odmr.RecipientResult
		var outcomes []string
		for _, r := range env.To {
			res = append(res, odmr.RecipientResult{Recipient: r})
			outcomes = append(outcomes, r+"=ok")
		}
		require.NoError(t, m.Complete(ctx, res))
		l.record("DONE " + env.ID + " " + strings.Join(outcomes, ","))
		drained++
	}
	require.NoError(t, b.Close())
	assert.False(t, has(t, s, crashDomains...), "leases of killed processes are gone")
	left, _ := readNames(filepath.Join(dir, tmpDir))
	assert.Empty(t, left, "Open removed the debris")
	stats, err := s.List()
	require.NoError(t, err)
	assert.Empty(t, stats)

	assert.Empty(t, l.bad, "partial bodies")
	dups := 0
	for k, n := range l.gotAfter {
		dups += n
		t.Errorf("%s delivered or completed again after Complete returned", k)
	}
	for id, rcpts := range l.enqueued {
		for _, r := range rcpts {
			k := id + " " + r
			if l.final[k] == "" && !unacked[k] {
				t.Errorf("%s never settled", k)
			}
		}
	}

	// Every recorded failure has its DSN.
	_, err = s.FlushBounces(ctx)
	require.NoError(t, err)
	reported := map[string]bool{}
	entries, _ := os.ReadDir(bouncesDir)
	var names []string
	for _, e := range entries {
		// .tmp-* files are DSNs whose writing a kill interrupted; the
		// spool writes them again.
		if strings.HasSuffix(e.Name(), ".eml") && !strings.HasPrefix(e.Name(), ".") {
			names = append(names, e.Name())
		}
	}
	for _, n := range names {
		data, err := os.ReadFile(filepath.Join(bouncesDir, n))
		require.NoError(t, err)
		p := parseDSN(t, string(data))
		for _, h := range p.recipients {
			reported[strings.TrimPrefix(h.Get("Final-Recipient"), "rfc822; ")] = true
		}
	}
	for k := range l.failed {
		_, r, _ := strings.Cut(k, " ")
		assert.True(t, reported[r], "no DSN for %s", k)
	}

	repeated := 0
	for _, n := range l.got {
		repeated += n - 1
	}
	t.Logf("debris of killed writes: %d temporary files, %d uncommitted bodies; all removed by Open", len(tmpDebris), uncommitted)
	t.Logf("%d rounds, %d events: %d messages acknowledged; before the final drain %d recipients queued and %d settled by a Complete whose report the kill cut off; %d messages drained at the end; %d recipients failed with %d DSNs written; %d deliveries repeated: %d after temporary failures, %d after a kill between reading and Complete (at-least-once); %d duplicates after Complete; %d partial bodies",
		rounds, l.events, len(l.enqueued), queued, len(unacked), drained, len(l.failed), len(names), repeated, l.temp, repeated-l.temp, dups, len(l.bad))
}
