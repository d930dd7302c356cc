package spool

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-odmr/odmr"
)

// The queue-size scaling measurement (issue 17): how the spool's start-up,
// memory, ATRN answer (HasMail), one session's delivery and the periodic
// maintenance grow with the number of messages queued. It is not an
// ordinary test: filling a spool with a million messages writes three
// million files (about 8 GB on ext4). Run it with
//
//	ODMR_SPOOL_SCALE=0,10000,100000,1000000 go test -run '^TestQueueScaling$' -v -timeout 2h ./spool/
//
// and ODMR_SPOOL_SCALE_DIR=/some/dir to fill somewhere else than the test's
// temporary directory; there, a spool filled before is used again, and
// kept if ODMR_SPOOL_SCALE_KEEP is set. Each size is filled directly in
// the spool's format (no fsync, ten messages per domain), then measured in
// a fresh process, so that its memory is the spool's alone. To compare
// with another version of the package in the same run, build its test
// binary (with this file) and name it in ODMR_SPOOL_SCALE_BEFORE: each
// size is then measured by both binaries, on the same files.
const (
	scaleEnv       = "ODMR_SPOOL_SCALE"
	scaleDirEnv    = "ODMR_SPOOL_SCALE_DIR"
	scaleKeepEnv   = "ODMR_SPOOL_SCALE_KEEP"
	scaleBeforeEnv = "ODMR_SPOOL_SCALE_BEFORE"
	scaleChildEnv  = "ODMR_SPOOL_SCALE_CHILD" // the spool the child measures
	scalePerDom    = 10                       // messages per domain
	scaleBodySize  = 512
)

// scaleResult is what the child measures.
type scaleResult struct {
	Label      string  `json:"-"`
	N          int     `json:"n"`
	OpenMS     float64 `json:"open_ms"`    // Open returns: listening
	IndexedMS  float64 `json:"indexed_ms"` // the index is complete
	RSSBytes   int64   `json:"rss"`        // VmRSS growth, after GC and FreeOSMemory
	HeapBytes  int64   `json:"heap"`       // live heap growth, after GC
	HasMailP50 float64 `json:"hasmail_p50_us"`
	HasMailP99 float64 `json:"hasmail_p99_us"`
	SessionMS  float64 `json:"session_ms"`  // one session delivering one domain's mail
	MaintainMS float64 `json:"maintain_ms"` // one periodic maintenance (refresh and Expire)
	StatsMS    float64 `json:"stats_ms"`    // one QueueStats, as a metrics scrape
}

func TestQueueScaling(t *testing.T) {
	sizes := os.Getenv(scaleEnv)
	if sizes == "" {
		t.Skip("set " + scaleEnv + "=0,10000,100000,1000000 to measure")
	}
	base := os.Getenv(scaleDirEnv)
	if base == "" {
		base = t.TempDir()
	}
	var results []scaleResult
	for _, f := range strings.Split(sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil {
			t.Fatal(err)
		}
		dir := filepath.Join(base, fmt.Sprintf("spool-%d", n))
		filled := dir + ".filled"
		if _, err := os.Stat(filled); err != nil {
			os.RemoveAll(dir)
			t0 := time.Now()
			if err := fillSpool(dir, n); err != nil {
				t.Fatal(err)
			}
			t.Logf("filled %d messages in %v", n, time.Since(t0).Round(time.Millisecond))
			if err := os.WriteFile(filled, nil, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		bins := [][2]string{{"after", os.Args[0]}}
		if before := os.Getenv(scaleBeforeEnv); before != "" {
			bins = [][2]string{{"before", before}, {"after", os.Args[0]}}
		}
		for _, bin := range bins {
			r, err := scaleChild(bin[1], dir)
			if err != nil {
				t.Fatal(err)
			}
			r.Label = bin[0]
			results = append(results, r)
		}
		if os.Getenv(scaleKeepEnv) == "" {
			os.RemoveAll(dir)
			os.Remove(filled)
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\n%6s %9s %10s %11s %9s %10s %13s %13s %11s %12s %10s\n", "", "queued", "open ms", "indexed ms", "RSS B/msg", "heap B/msg",
		"HasMail p50us", "HasMail p99us", "session ms", "maintain ms", "stats ms")
	for _, r := range results {
		per := func(v int64) string {
			if r.N == 0 {
				return "-"
			}
			return strconv.FormatInt(v/int64(r.N), 10)
		}
		fmt.Fprintf(&b, "%6s %9d %10.1f %11.1f %9s %10s %13.1f %13.1f %11.2f %12.2f %10.2f\n", r.Label, r.N, r.OpenMS, r.IndexedMS, per(r.RSSBytes), per(r.HeapBytes),
			r.HasMailP50, r.HasMailP99, r.SessionMS, r.MaintainMS, r.StatsMS)
	}
	t.Log(b.String())
}

// scaleChild measures the spool in dir with the test binary bin.
func scaleChild(bin, dir string) (scaleResult, error) {
	var r scaleResult
	cmd := exec.Command(bin, "-test.run=^TestQueueScalingChild$", "-test.v")
	cmd.Env = append(os.Environ(), scaleChildEnv+"="+dir, scaleEnv+"=")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return r, fmt.Errorf("child %s: %v\n%s", bin, err, out.String())
	}
	for line := range strings.Lines(out.String()) {
		if js, ok := strings.CutPrefix(strings.TrimSpace(line), "RESULT "); ok {
			err := json.Unmarshal([]byte(js), &r)
			return r, err
		}
	}
	return r, fmt.Errorf("child %s: no result\n%s", bin, out.String())
}

// TestQueueScalingChild is the measuring process of TestQueueScaling.
func TestQueueScalingChild(t *testing.T) {
	dir := os.Getenv(scaleChildEnv)
	if dir == "" {
		t.Skip("run by TestQueueScaling")
	}
	n := 0
	if names, err := readNames(filepath.Join(dir, queueDir)); err == nil {
		n = len(names) / 2
	}
	debug.FreeOSMemory()
	rss0, heap0 := memUse()
	r := scaleResult{N: n}
	ctx := context.Background()

	t0 := time.Now()
	s, err := Open(dir, Options{MaintenanceInterval: -1, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	r.OpenMS = ms(time.Since(t0))
	// Open returns before the index is complete when the spool builds it
	// in the background; the same program measures a spool without.
	if w, ok := any(s).(interface{ WaitIndexed(context.Context) error }); ok {
		if err := w.WaitIndexed(ctx); err != nil {
			t.Fatal(err)
		}
	}
	r.IndexedMS = ms(time.Since(t0))
	rss1, heap1 := memUse()
	r.RSSBytes, r.HeapBytes = rss1-rss0, heap1-heap0

	domains := max(n/scalePerDom, 1)
	rng := rand.New(rand.NewPCG(1, 2))
	lat := make([]time.Duration, 2000)
	for i := range lat {
		d := []string{scaleDomain(rng.IntN(domains))}
		t1 := time.Now()
		has, err := s.HasMail(ctx, d)
		lat[i] = time.Since(t1)
		if err != nil || has && n == 0 {
			t.Fatalf("HasMail(%s) = %v, %v", d, has, err)
		}
	}
	slices.Sort(lat)
	r.HasMailP50 = us(lat[len(lat)/2])
	r.HasMailP99 = us(lat[len(lat)*99/100])

	t1 := time.Now()
	if _, err := s.QueueStats(ctx); err != nil {
		t.Fatal(err)
	}
	r.StatsMS = ms(time.Since(t1))

	// One periodic maintenance: a version with an incremental refresh
	// does it first, one without refreshes the index in Expire.
	t1 = time.Now()
	if rs, ok := any(s).(interface{ reconcileSome(int) }); ok {
		rs.reconcileSome(1000) // DefaultRefreshDomains
	}
	if _, err := s.Expire(ctx); err != nil {
		t.Fatal(err)
	}
	r.MaintainMS = ms(time.Since(t1))

	// A domain that still has mail: a spool filled once is measured
	// several times.
	session := domains / 2
	for n > 0 {
		if has, err := s.HasMail(ctx, []string{scaleDomain(session)}); err != nil {
			t.Fatal(err)
		} else if has {
			break
		}
		session = (session + 1) % domains
	}
	t1 = time.Now()
	b, err := s.Claim(ctx, []string{scaleDomain(session)})
	if err != nil {
		t.Fatal(err)
	}
	got := 0
	for {
		m, err := b.Next(ctx)
		if err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		rc, err := m.Open()
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, rc)
		rc.Close()
		if err := m.Complete(ctx, []odmr.RecipientResult{{Recipient: m.Envelope().To[0]}}); err != nil {
			t.Fatal(err)
		}
		got++
	}
	b.Close()
	r.SessionMS = ms(time.Since(t1))
	if n > 0 && got != min(n, scalePerDom) {
		t.Fatalf("session delivered %d messages", got)
	}
	js, _ := json.Marshal(r)
	fmt.Printf("RESULT %s\n", js)
}

func scaleDomain(i int) string { return fmt.Sprintf("d%06d.test", i) }

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
func us(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1000 }

// memUse returns the process's resident set and live heap after a
// collection that gives freed memory back to the system.
func memUse() (rss, heap int64) {
	runtime.GC()
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	f, err := os.Open("/proc/self/status")
	if err == nil {
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
				kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
				rss = kb << 10
			}
		}
	}
	return rss, int64(ms.HeapAlloc)
}

// fillSpool writes a spool holding n queued messages, scalePerDom per
// domain, as Enqueue leaves them but without fsync: body, envelope and
// marker. It writes with a few goroutines: the file system, not the CPU,
// sets the pace.
func fillSpool(dir string, n int) error {
	s, err := Open(dir, Options{MaintenanceInterval: -1, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return err
	}
	s.Close()
	domains := max(n/scalePerDom, 1)
	for d := range domains {
		if n == 0 {
			break
		}
		if err := os.MkdirAll(filepath.Join(dir, domainsDir, dirName(scaleDomain(d))), dirPerm); err != nil {
			return err
		}
	}
	body := bytes.Repeat([]byte("0123456789abcdefghijklmnopqrstu\r\n"), scaleBodySize/33)
	body = append([]byte("Subject: scale\r\n\r\n"), body...)
	received := time.Now().Add(-time.Hour)
	start := received.UnixNano()
	const workers = 4
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			for i := w; i < n; i += workers {
				id := fmt.Sprintf("%016x%012x", uint64(start)+uint64(i), uint64(i))
				domain := scaleDomain(i % domains)
				ef := &envelopeFile{Version: envelopeVersion, ID: id, From: "s@origin.test", Received: received,
					Size: int64(len(body)), Recipients: []recipientFile{{Addr: "u@" + domain, State: Queued}}}
				data, err := json.Marshal(ef)
				if err == nil {
					err = os.WriteFile(filepath.Join(dir, queueDir, id+".eml"), body, filePerm)
				}
				if err == nil {
					err = os.WriteFile(filepath.Join(dir, queueDir, id+".json"), data, filePerm)
				}
				if err == nil {
					err = os.WriteFile(filepath.Join(dir, domainsDir, dirName(domain), id), nil, filePerm)
				}
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	return <-errs
}
