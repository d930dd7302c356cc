package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/accounts"
)

const (
	benchUser   = "bench"
	benchSecret = "bench-secret"
	benchDomain = "example.org"
)

var discardLogger = slog.New(slog.DiscardHandler)

// chunking turns BDAT on in the providers newProvider makes.
var chunking bool

// newProvider returns a provider with one account and its abuse limits
// off, so that a benchmark measures work and not refusals.
func newProvider(q odmr.QueueSource) *odmr.Provider {
	accts := accounts.Map{benchUser: {Name: benchUser, Secret: benchSecret, Domains: []string{benchDomain}}}
	return &odmr.Provider{
		Hostname:            "provider.bench",
		Authenticator:       accts,
		Authorizer:          accts,
		Queue:               q,
		Logger:              discardLogger,
		ATRNInterval:        -1,
		AuthFailuresAllowed: -1,
		AuthGuessInterval:   -1,
		MaxSessions:         -1,
		MaxSessionsPerAddr:  -1,
		MaxAuthFailures:     1 << 20,
		DisableChunking:     !chunking,
	}
}

// serveProvider runs p on a loopback listener.
func serveProvider(p *odmr.Provider) (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	go p.ServeListener(l)
	return l.Addr().String(), nil
}

func newCustomer(addr string, sink odmr.MessageSink) *odmr.Customer {
	return &odmr.Customer{
		Addr:       addr,
		Username:   benchUser,
		Secret:     benchSecret,
		Domains:    []string{benchDomain},
		Mechanisms: []string{odmr.CRAMMD5},
		Hostname:   "customer.bench",
		Sink:       sink,
		Logger:     discardLogger,
	}
}

// messageBody returns a message of exactly size bytes of CRLF lines,
// some starting with a dot.
func messageBody(size int, seq int) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: sender@x.bench\r\nTo: u%d@%s\r\nSubject: benchmark %d\r\n\r\n", seq, benchDomain, seq)
	for i := 0; b.Len() < size-160; i++ {
		if i%50 == 0 {
			b.WriteByte('.')
		}
		fmt.Fprintf(&b, "line %05d: the quick brown fox jumps over the lazy dog 0123456789\r\n", i)
	}
	if pad := size - b.Len() - 2; pad > 0 {
		b.WriteString(strings.Repeat("x", pad))
	}
	b.WriteString("\r\n")
	return b.Bytes()[:max(size, 2)]
}

// genBody streams n bytes of CRLF lines without holding them: a 64 KiB
// block of lines repeated, then whole lines, then one last short line.
type genBody struct {
	remaining int64
	block     []byte
	line      []byte
	pending   []byte
}

var genBlock, genLine = func() ([]byte, []byte) {
	line := []byte("line of a very large message: the quick brown fox jumps over the lazy dog\r\n")
	var b bytes.Buffer
	for i := 0; b.Len()+2*len(line) < 64<<10; i++ {
		if i%64 == 0 {
			b.WriteByte('.')
		}
		b.Write(line)
	}
	return b.Bytes(), line
}()

func newGenBody(n int64) *genBody {
	return &genBody{remaining: max(n, 2), block: genBlock, line: genLine}
}

func (g *genBody) Read(p []byte) (int, error) {
	if len(g.pending) == 0 {
		switch r := g.remaining; {
		case r == 0:
			return 0, io.EOF
		case r >= int64(len(g.block))+2*int64(len(g.line)):
			g.pending = g.block
		case r >= 2*int64(len(g.line)):
			g.pending = g.line
		default:
			g.pending = append(bytes.Repeat([]byte("z"), int(r)-2), '\r', '\n')
		}
		g.remaining -= int64(len(g.pending))
	}
	n := copy(p, g.pending)
	g.pending = g.pending[n:]
	return n, nil
}

// crcOf returns the size and CRC-32C of what r yields.
func crcOf(r io.Reader) (int64, uint32) {
	h := crc32.New(crc32.MakeTable(crc32.Castagnoli))
	n, _ := io.Copy(h, r)
	return n, h.Sum32()
}

// listQueue hands out its messages in order at no cost, and records
// their outcomes.
type listQueue struct {
	mu   sync.Mutex
	msgs []*listMsg
	next int
	done chan struct{} // closed when every message is completed
	left int
	// completed holds the time of each Complete, in order.
	completed []time.Time
}

type listMsg struct {
	q    *listQueue
	env  odmr.Envelope
	open func() io.Reader
	res  []odmr.RecipientResult
}

func newListQueue() *listQueue { return &listQueue{done: make(chan struct{})} }

func (q *listQueue) add(env odmr.Envelope, open func() io.Reader) {
	q.msgs = append(q.msgs, &listMsg{q: q, env: env, open: open})
	q.left++
}

func (q *listQueue) HasMail(context.Context, []string) (bool, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.next < len(q.msgs), nil
}
func (q *listQueue) Claim(context.Context, []string) (odmr.Batch, error) { return q, nil }
func (q *listQueue) Next(context.Context) (odmr.Message, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.next == len(q.msgs) {
		return nil, io.EOF
	}
	q.next++
	return q.msgs[q.next-1], nil
}
func (q *listQueue) Close() error               { return nil }
func (m *listMsg) Envelope() odmr.Envelope      { return m.env }
func (m *listMsg) Open() (io.ReadCloser, error) { return io.NopCloser(m.open()), nil }
func (m *listMsg) Complete(_ context.Context, r []odmr.RecipientResult) error {
	m.q.mu.Lock()
	defer m.q.mu.Unlock()
	m.res = r
	m.q.completed = append(m.q.completed, time.Now())
	if m.q.left--; m.q.left == 0 {
		close(m.q.done)
	}
	return nil
}

// countSink is a MessageSink that reads and counts.
type countSink struct {
	mu    sync.Mutex
	n     int
	bytes int64
}

func (s *countSink) Deliver(_ context.Context, _ odmr.Envelope, body io.Reader) error {
	n, err := io.Copy(io.Discard, body)
	s.mu.Lock()
	s.n++
	s.bytes += n
	s.mu.Unlock()
	return err
}

// crcSink is a MessageSink that checksums what it reads.
type crcSink struct {
	mu    sync.Mutex
	bytes int64
	crc   uint32
}

func (s *crcSink) Deliver(_ context.Context, _ odmr.Envelope, body io.Reader) error {
	br := bufio.NewReader(body)
	if err := skipReceived(br); err != nil {
		return err
	}
	n, c := crcOf(br)
	s.mu.Lock()
	s.bytes, s.crc = n, c
	s.mu.Unlock()
	return nil
}

// goSMTPBackend is a go-smtp backend that counts, and checksums, what it
// reads; with auth it accepts any AUTH PLAIN.
type goSMTPBackend struct {
	mu    sync.Mutex
	n     int
	bytes int64
	crc   uint32
	sum   bool
	got   chan struct{}
}

func (b *goSMTPBackend) NewSession(*smtp.Conn) (smtp.Session, error) {
	return &goSMTPSession{b: b}, nil
}

type goSMTPSession struct{ b *goSMTPBackend }

func (s *goSMTPSession) Mail(string, *smtp.MailOptions) error { return nil }
func (s *goSMTPSession) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (s *goSMTPSession) Data(r io.Reader) error {
	var n int64
	var c uint32
	if s.b.sum {
		n, c = crcOf(r)
	} else {
		n, _ = io.Copy(io.Discard, r)
	}
	s.b.mu.Lock()
	s.b.n++
	s.b.bytes += n
	s.b.crc = c
	s.b.mu.Unlock()
	if s.b.got != nil {
		select {
		case s.b.got <- struct{}{}:
		default:
		}
	}
	return nil
}
func (s *goSMTPSession) Reset()                   {}
func (s *goSMTPSession) Logout() error            { return nil }
func (s *goSMTPSession) AuthMechanisms() []string { return []string{sasl.Plain} }
func (s *goSMTPSession) Auth(string) (sasl.Server, error) {
	return sasl.NewPlainServer(func(_, user, pass string) error { return nil }), nil
}

type nopLog struct{}

func (nopLog) Printf(string, ...any) {}
func (nopLog) Println(...any)        {}

// serveGoSMTP runs a go-smtp server for b on loopback.
func serveGoSMTP(b *goSMTPBackend) (*smtp.Server, string, error) {
	srv := smtp.NewServer(b)
	srv.Domain = "gosmtp.bench"
	srv.AllowInsecureAuth = true
	srv.ErrorLog = nopLog{}
	srv.ReadTimeout = 5 * time.Minute
	srv.WriteTimeout = time.Minute
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, "", err
	}
	go srv.Serve(l)
	return srv, l.Addr().String(), nil
}

// memory is what a process reports about its memory.
type memory struct {
	VmHWM, VmRSS       int64 // bytes, from /proc/self/status
	HeapInuse, HeapSys uint64
	StackInuse, Sys    uint64
	TotalAlloc         uint64
	NumGC              uint32
	Goroutines         int
}

func readMemory() memory {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	m := memory{
		HeapInuse: ms.HeapInuse, HeapSys: ms.HeapSys, StackInuse: ms.StackInuse, Sys: ms.Sys,
		TotalAlloc: ms.TotalAlloc, NumGC: ms.NumGC, Goroutines: runtime.NumGoroutine(),
	}
	if b, err := os.ReadFile("/proc/self/status"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			f := strings.Fields(l)
			if len(f) == 3 && f[2] == "kB" {
				kb, _ := strconv.ParseInt(f[1], 10, 64)
				switch f[0] {
				case "VmHWM:":
					m.VmHWM = kb << 10
				case "VmRSS:":
					m.VmRSS = kb << 10
				}
			}
		}
	}
	return m
}

// settledMemory collects garbage first, so that what is measured is what
// is live.
func settledMemory() memory {
	runtime.GC()
	debug.FreeOSMemory()
	return readMemory()
}

// raiseNoFile raises the soft limit on open files to the hard limit.
func raiseNoFile() uint64 {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0
	}
	if rl.Cur < rl.Max {
		rl.Cur = rl.Max
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl)
		syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl)
	}
	return rl.Cur
}

// child is a copy of this program running one role, talking over its
// stdin and stdout: it prints "ADDR <address>" and "RESULT <json>" lines
// and reads commands from stdin.
type child struct {
	cmd   *exec.Cmd
	in    io.WriteCloser
	lines chan string
}

func startChild(role string, args ...string) (*child, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	if *childProfile != "" {
		args = append(args, "-childprofile", *childProfile)
	}
	cmd := exec.Command(exe, append([]string{"-child", role}, args...)...)
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	c := &child{cmd: cmd, in: in, lines: make(chan string, 16)}
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			c.lines <- sc.Text()
		}
		close(c.lines)
	}()
	return c, nil
}

// expect returns the rest of the next line that starts with prefix.
func (c *child) expect(prefix string) (string, error) {
	for l := range c.lines {
		if rest, ok := strings.CutPrefix(l, prefix+" "); ok {
			return rest, nil
		}
		fmt.Fprintln(os.Stderr, "child:", l)
	}
	return "", fmt.Errorf("child %v ended without %s", c.cmd.Args[1:3], prefix)
}

func (c *child) result(v any) error {
	s, err := c.expect("RESULT")
	if err != nil {
		return err
	}
	return json.Unmarshal([]byte(s), v)
}

func (c *child) send(cmd string) { fmt.Fprintln(c.in, cmd) }

func (c *child) wait() error {
	c.in.Close()
	return c.cmd.Wait()
}

// printResult writes a RESULT line for the parent.
func printResult(v any) {
	b, _ := json.Marshal(v)
	fmt.Printf("RESULT %s\n", b)
}

// readCommand returns the next line the parent sends, or "" once it has
// closed stdin.
func readCommand(sc *bufio.Scanner) string {
	if sc.Scan() {
		return sc.Text()
	}
	return ""
}

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}

func mib(b int64) string   { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }
func kib(b float64) string { return fmt.Sprintf("%.1f KiB", b/1024) }

// skipReceived reads past the Received: field the customer puts in front
// of each message, so that the checksum is of the message as sent.
func skipReceived(br *bufio.Reader) error {
	if head, _ := br.Peek(len("Received:")); string(head) != "Received:" {
		return nil
	}
	for {
		if _, err := br.ReadSlice('\n'); err != nil {
			return err
		}
		if next, _ := br.Peek(1); len(next) == 0 || (next[0] != ' ' && next[0] != '\t') {
			return nil
		}
	}
}
