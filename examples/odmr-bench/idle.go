package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync"
	"time"

	"github.com/go-odmr/odmr/memqueue"
)

// idleResult is what an idle-server child reports.
type idleResult struct {
	Mem memory
}

// idleMemory opens *nIdle sessions to a provider, and to a go-smtp
// server, each in a child process, and reports the memory each idle
// session costs there.
func idleMemory() ([]row, error) {
	limit := raiseNoFile()
	n := *nIdle
	if int(limit) < n+200 {
		n = int(limit) - 200
		fmt.Fprintf(os.Stderr, "odmr-bench: RLIMIT_NOFILE is %d: holding %d sessions\n", limit, n)
	}
	type stats struct{ rss, heap, stack, goroutines float64 }
	measure := func(role string) (stats, error) {
		var st stats
		c, err := startChild(role)
		if err != nil {
			return st, err
		}
		defer c.wait()
		addr, err := c.expect("ADDR")
		if err != nil {
			return st, err
		}
		var before, after idleResult
		c.send("measure")
		if err := c.result(&before); err != nil {
			return st, err
		}
		conns, err := openIdle(addr, n)
		defer func() {
			for _, cn := range conns {
				cn.Close()
			}
		}()
		if err != nil {
			return st, err
		}
		c.send("measure")
		if err := c.result(&after); err != nil {
			return st, err
		}
		if *heapProfile != "" {
			c.send("profile " + *heapProfile + "." + role)
		}
		per := func(a, b int64) float64 { return float64(a-b) / float64(n) }
		st.rss = per(after.Mem.VmRSS, before.Mem.VmRSS)
		st.heap = per(int64(after.Mem.HeapInuse), int64(before.Mem.HeapInuse))
		st.stack = per(int64(after.Mem.StackInuse), int64(before.Mem.StackInuse))
		st.goroutines = per(int64(after.Mem.Goroutines), int64(before.Mem.Goroutines))
		return st, nil
	}
	o, err := measure("idle-provider")
	if err != nil {
		return nil, fmt.Errorf("provider: %w", err)
	}
	b, err := measure("idle-gosmtp")
	if err != nil {
		return nil, fmt.Errorf("go-smtp: %w", err)
	}
	label := fmt.Sprintf("%d idle sessions (greeted, EHLO answered)", n)
	return []row{
		{figure: label + ": RSS per session", odmr: kib(o.rss), baseline: kib(b.rss), ratio: o.rss / b.rss, note: "VmRSS delta after GC"},
		{figure: label + ": heap per session", odmr: kib(o.heap), baseline: kib(b.heap), ratio: o.heap / b.heap, note: "HeapInuse delta"},
		{figure: label + ": stack per session", odmr: kib(o.stack), baseline: kib(b.stack), ratio: o.stack / b.stack, note: "StackInuse delta"},
		{figure: label + ": goroutines per session", odmr: fmt.Sprintf("%.2f", o.goroutines), baseline: fmt.Sprintf("%.2f", b.goroutines), ratio: o.goroutines / b.goroutines},
	}, nil
}

// openIdle opens n connections to addr; each reads the greeting, sends
// EHLO and reads the reply, then stays open.
func openIdle(addr string, n int) ([]net.Conn, error) {
	conns := make([]net.Conn, n)
	errs := make(chan error, 1)
	var wg sync.WaitGroup
	work := make(chan int)
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				c, err := idleSession(addr)
				if err != nil {
					select {
					case errs <- fmt.Errorf("session %d: %w", i, err):
					default:
					}
					continue
				}
				conns[i] = c
			}
		}()
	}
	for i := range n {
		work <- i
	}
	close(work)
	wg.Wait()
	var out []net.Conn
	for _, c := range conns {
		if c != nil {
			out = append(out, c)
		}
	}
	select {
	case err := <-errs:
		return out, err
	default:
	}
	// Let the servers settle into their reads.
	time.Sleep(min(500*time.Millisecond, time.Duration(n)*50*time.Microsecond))
	return out, nil
}

func idleSession(addr string) (net.Conn, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(30 * time.Second))
	br := bufio.NewReader(c)
	readReply := func() error {
		for {
			l, err := br.ReadString('\n')
			if err != nil {
				return err
			}
			if len(l) < 4 || l[3] != '-' {
				if !strings.HasPrefix(l, "2") {
					return fmt.Errorf("reply %q", strings.TrimSpace(l))
				}
				return nil
			}
		}
	}
	if err := readReply(); err != nil {
		c.Close()
		return nil, err
	}
	fmt.Fprintf(c, "EHLO idle.bench\r\n")
	if err := readReply(); err != nil {
		c.Close()
		return nil, err
	}
	c.SetDeadline(time.Time{})
	return c, nil
}

// idleServerChild serves a provider or a go-smtp server and reports its
// memory each time the parent says "measure".
func idleServerChild(role string) error {
	var addr string
	var err error
	if role == "idle-provider" {
		p := newProvider(&memqueue.Queue{})
		addr, err = serveProvider(p)
	} else {
		_, addr, err = serveGoSMTP(&goSMTPBackend{})
	}
	if err != nil {
		return err
	}
	fmt.Printf("ADDR %s\n", addr)
	sc := bufio.NewScanner(os.Stdin)
	for {
		cmd, arg, _ := strings.Cut(readCommand(sc), " ")
		switch cmd {
		case "measure":
			printResult(idleResult{Mem: settledMemory()})
		case "profile":
			runtime.GC()
			f, err := os.Create(arg)
			if err != nil {
				return err
			}
			pprof.Lookup("heap").WriteTo(f, 0)
			f.Close()
		case "":
			return nil
		}
	}
}
