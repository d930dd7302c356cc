package spool

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/memqueue"
)

// BenchmarkSpool enqueues 10,000 messages of 10 KiB and delivers them all,
// through the spool and, in the same run, through memqueue.Queue, and
// reports both rates and their ratio (how many times faster the memory
// queue is). The spool's cost is mostly fsync: four per message queued, one
// per message delivered. "serial" runs one sender and one session;
// "parallel" runs 8 of each, which lets the file system commit several
// messages per journal flush.
//
//	go test -run='^$' -bench=. ./spool/
func BenchmarkSpool(b *testing.B) {
	for _, workers := range []int{1, 8} {
		name := "serial"
		if workers > 1 {
			name = fmt.Sprintf("parallel-%d", workers)
		}
		b.Run(name, func(b *testing.B) { benchmarkQueues(b, workers) })
	}
}

const (
	benchMessages = 10000
	benchSize     = 10 << 10
	benchDomains  = 10
)

// benchQueue is what both queues offer the benchmark.
type benchQueue interface {
	odmr.QueueSource
	enqueue(env odmr.Envelope, body io.Reader) error
}

type spoolBench struct{ *Spool }

func (s spoolBench) enqueue(env odmr.Envelope, body io.Reader) error {
	_, err := s.Enqueue(context.Background(), env, body)
	return err
}

type memBench struct{ *memqueue.Queue }

func (q memBench) enqueue(env odmr.Envelope, body io.Reader) error {
	_, err := q.Enqueue(env, body)
	return err
}

func benchmarkQueues(b *testing.B, workers int) {
	line := bytes.Repeat([]byte("0123456789abcdef"), 4)
	body := []byte("From: bench@origin.test\r\nSubject: benchmark\r\n\r\n")
	for len(body) < benchSize-len(line)-2 {
		body = append(append(body, line...), '\r', '\n')
	}
	var spoolTime, memTime time.Duration
	rounds := 0
	for b.Loop() {
		s, err := Open(b.TempDir(), Options{MaintenanceInterval: -1, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			b.Fatal(err)
		}
		spoolTime += runQueue(b, spoolBench{s}, body, workers)
		s.Close()
		memTime += runQueue(b, memBench{&memqueue.Queue{}}, body, workers)
		rounds++
	}
	n := float64(benchMessages * rounds)
	spoolRate, memRate := n/spoolTime.Seconds(), n/memTime.Seconds()
	b.ReportMetric(spoolRate, "spool-msg/s")
	b.ReportMetric(memRate, "memqueue-msg/s")
	b.ReportMetric(memRate/spoolRate, "ratio")
}

// runQueue enqueues the messages, delivers them all and returns the time
// it took.
func runQueue(b *testing.B, q benchQueue, body []byte, workers int) time.Duration {
	ctx := context.Background()
	start := time.Now()
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := w; i < benchMessages; i += workers {
				env := odmr.Envelope{From: "bench@origin.test", To: []string{fmt.Sprintf("u%d@d%d.test", i, i%benchDomains)}}
				if err := q.enqueue(env, bytes.NewReader(body)); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	delivered := make([]int, workers)
	for w := range workers {
		wg.Go(func() {
			for d := w % benchDomains; ; d = (d + 1) % benchDomains {
				has, err := q.HasMail(ctx, []string{fmt.Sprintf("d%d.test", d)})
				if err != nil {
					b.Error(err)
					return
				}
				if !has {
					if all, _ := q.HasMail(ctx, allBenchDomains); !all {
						return
					}
					continue
				}
				batch, err := q.Claim(ctx, []string{fmt.Sprintf("d%d.test", d)})
				if err != nil {
					b.Error(err)
					return
				}
				for {
					m, err := batch.Next(ctx)
					if errors.Is(err, io.EOF) {
						break
					} else if err != nil {
						b.Error(err)
						return
					}
					rc, err := m.Open()
					if err != nil {
						b.Error(err)
						return
					}
					io.Copy(io.Discard, rc)
					rc.Close()
					env := m.Envelope()
					if err := m.Complete(ctx, []odmr.RecipientResult{{Recipient: env.To[0]}}); err != nil {
						b.Error(err)
						return
					}
					delivered[w]++
				}
				batch.Close()
			}
		})
	}
	wg.Wait()
	total := 0
	for _, n := range delivered {
		total += n
	}
	if total != benchMessages {
		b.Fatalf("delivered %d messages, want %d", total, benchMessages)
	}
	return time.Since(start)
}

var allBenchDomains = func() []string {
	var ds []string
	for d := range benchDomains {
		ds = append(ds, fmt.Sprintf("d%d.test", d))
	}
	return ds
}()

// BenchmarkHasMail shows that HasMail costs the same with 10 or 100,000
// messages queued for a domain: it reads one directory entry per domain.
// It asks for four domains, the last one holding the mail.
func BenchmarkHasMail(b *testing.B) {
	for _, n := range []int{10, 100000} {
		b.Run(fmt.Sprintf("queued=%d", n), func(b *testing.B) {
			s, err := Open(b.TempDir(), Options{MaintenanceInterval: -1, Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			// Markers as Enqueue leaves them; HasMail looks at nothing else.
			dir := s.path(domainsDir, "big.test")
			if err := os.MkdirAll(dir, dirPerm); err != nil {
				b.Fatal(err)
			}
			t0 := time.Now()
			for i := range n {
				id := newID(t0.Add(time.Duration(i)))
				if err := os.WriteFile(filepath.Join(dir, id), nil, filePerm); err != nil {
					b.Fatal(err)
				}
			}
			domains := []string{"a.test", "b.test", "c.test", "big.test"}
			ctx := context.Background()
			for b.Loop() {
				if ok, err := s.HasMail(ctx, domains); !ok || err != nil {
					b.Fatal(ok, err)
				}
			}
		})
	}
}

// benchBody is the body of BenchmarkOpen's messages; the envelopes
// record its size, so that Open does not take them for damaged.
var benchBody = []byte("Subject: x\r\n\r\nx\r\n")

// BenchmarkOpen measures Open on a spool holding n queued messages, and
// the background work that follows it until WaitIndexed returns: reading
// every envelope to rebuild the index and restore missing markers. The
// files are written directly, without fsync, to set it up quickly. See
// TestQueueScaling for the whole picture at up to a million messages.
func BenchmarkOpen(b *testing.B) {
	for _, n := range []int{1000, 100000} {
		b.Run(fmt.Sprintf("queued=%d", n), func(b *testing.B) {
			dir := b.TempDir()
			s, err := Open(dir, Options{MaintenanceInterval: -1, Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				b.Fatal(err)
			}
			s.Close()
			t0 := time.Now()
			for i := range n {
				id := newID(t0.Add(time.Duration(i)))
				domain := fmt.Sprintf("d%d.test", i%benchDomains)
				ef := &envelopeFile{Version: envelopeVersion, ID: id, From: "s@x.test", Received: t0, Size: int64(len(benchBody)),
					Recipients: []recipientFile{{Addr: "u@" + domain, State: Queued}}}
				data, err := json.Marshal(ef)
				if err != nil {
					b.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(dir, queueDir, id+".eml"), benchBody, filePerm); err != nil {
					b.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(dir, queueDir, id+".json"), data, filePerm); err != nil {
					b.Fatal(err)
				}
				md := filepath.Join(dir, domainsDir, dirName(domain))
				os.MkdirAll(md, dirPerm)
				if err := os.WriteFile(filepath.Join(md, id), nil, filePerm); err != nil {
					b.Fatal(err)
				}
			}
			for b.Loop() {
				s, err := Open(dir, Options{MaintenanceInterval: -1, Logger: slog.New(slog.DiscardHandler)})
				if err != nil {
					b.Fatal(err)
				}
				if err := s.WaitIndexed(context.Background()); err != nil {
					b.Fatal(err)
				}
				s.Close()
			}
			b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N)/float64(n), "µs/message")
		})
	}
}
