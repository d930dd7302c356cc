package main

// The -customer mode: the checker plays the provider, and the customer
// under test connects to it once per check, run by -customer-cmd or by
// the operator.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/go-odmr/odmr/internal/smtprecorder"
	"github.com/go-odmr/odmr/odmrtest"
)

// defaultExitCodes maps the exit statuses of odmr-customer to outcomes:
// 6, the local target refused some mail, ends a session that ran to its
// end. fetchmail's agree but for 4 (any protocol error), 6 (unused) and
// 128 (AUTH refused).
const defaultExitCodes = "0=ok,1=no-mail,3=auth-failed,4=refused,6=ok,8=try-later"

// manualTimeout bounds each check when the operator runs the customer by
// hand and -timeout is not given.
const manualTimeout = 2 * time.Minute

// maxCommandLog bounds what the checker keeps of a customer command's
// output for one check (the tail is kept).
const maxCommandLog = 256 << 10

// maxSinkMessage bounds a message the sink takes; the suite's messages
// are a few kilobytes.
const maxSinkMessage = 64 << 20

// parseExitCodes parses -exit-codes: comma-separated STATUS=KIND pairs.
func parseExitCodes(s string) (map[int]odmrtest.OutcomeKind, error) {
	kinds := map[string]odmrtest.OutcomeKind{
		"ok": odmrtest.OutcomeOK, "no-mail": odmrtest.OutcomeNoMail, "refused": odmrtest.OutcomeRefused,
		"try-later": odmrtest.OutcomeTryLater, "auth-failed": odmrtest.OutcomeAuthFailed, "failed": odmrtest.OutcomeFailed,
	}
	m := make(map[int]odmrtest.OutcomeKind)
	for _, pair := range strings.Split(s, ",") {
		if pair = strings.TrimSpace(pair); pair == "" {
			continue
		}
		code, kind, ok := strings.Cut(pair, "=")
		n, err := strconv.Atoi(strings.TrimSpace(code))
		k, known := kinds[strings.TrimSpace(kind)]
		if !ok || err != nil || n < 0 || n > 255 || !known {
			return nil, fmt.Errorf("-exit-codes: %q: want STATUS=KIND, KIND one of ok, no-mail, refused, try-later, auth-failed, failed", pair)
		}
		m[n] = k
	}
	return m, nil
}

// customerChecks checks the flags of -customer and returns the suite's
// configuration without its hooks, and the meaning of exit statuses.
func (o *options) customerChecks() (odmrtest.CustomerConfig, map[int]odmrtest.OutcomeKind, error) {
	var missing []string
	for _, f := range []struct{ name, val string }{{"-user", o.user}, {"-domains", o.domains}} {
		if f.val == "" {
			missing = append(missing, f.name)
		}
	}
	if len(missing) > 0 {
		return odmrtest.CustomerConfig{}, nil, fmt.Errorf("%s required with -customer (see -h)", strings.Join(missing, ", "))
	}
	secret, err := o.secret()
	if err != nil {
		return odmrtest.CustomerConfig{}, nil, err
	}
	codes, err := parseExitCodes(o.exitCodes)
	if err != nil {
		return odmrtest.CustomerConfig{}, nil, err
	}
	cfg := odmrtest.CustomerConfig{
		User:     o.user,
		Secret:   secret,
		Domains:  splitList(o.domains),
		Timeout:  o.timeout,
		Hostname: o.hostname,
		Skip:     splitList(o.skip),
	}
	if len(cfg.Domains) == 0 {
		return odmrtest.CustomerConfig{}, nil, fmt.Errorf("-domains %q names no domain", o.domains)
	}
	switch o.refused {
	case "":
		cfg.RefusedRecipient = "refused@" + cfg.Domains[0]
	case "none":
	default:
		cfg.RefusedRecipient = o.refused
	}
	return cfg, codes, nil
}

// customerConfig turns the options into the customer suite's
// configuration; the listener, sink and secret file it opens are closed
// by the returned function.
func (o *options) customerConfig(stdout io.Writer) (cfg odmrtest.CustomerConfig, closeAll func(), err error) {
	cfg, codes, err := o.customerChecks()
	if err != nil {
		return cfg, nil, err
	}
	secret := cfg.Secret
	var closers []func()
	closeAll = func() {
		for _, c := range slices.Backward(closers) {
			c()
		}
	}
	fail := func(err error) (odmrtest.CustomerConfig, func(), error) {
		closeAll()
		return odmrtest.CustomerConfig{}, nil, err
	}
	pl, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fail(fmt.Errorf("-listen: %w", err))
	}
	prov := newSessionListener(pl)
	closers = append(closers, func() { prov.Close() })
	cfg.Listen = prov.view
	sink, sinkAddr, stopSink, err := startSink(o.sink, cfg.RefusedRecipient)
	if err != nil {
		return fail(fmt.Errorf("-sink: %w", err))
	}
	closers = append(closers, stopSink)
	fmt.Fprintf(stdout, "provider listening on %s; SMTP sink (the customer's local mail server) on %s\n", pl.Addr(), sinkAddr)

	if o.customerCmd == "" {
		fmt.Fprintf(stdout, "for each check, run the customer once: to %s as %s for %s, delivering to the SMTP server at %s (%v a check)\n",
			pl.Addr(), cfg.User, strings.Join(cfg.Domains, ","), sinkAddr, cfg.Timeout)
		cfg.Fetch = byHand(stdout, prov, sink, runIDs(cfg.Skip))
		return cfg, closeAll, nil
	}
	secretFile, removeSecret, err := o.secretFileFor(secret)
	if err != nil {
		return fail(err)
	}
	closers = append(closers, removeSecret)
	host, port, _ := net.SplitHostPort(pl.Addr().String())
	sinkHost, sinkPort, _ := net.SplitHostPort(sinkAddr.String())
	line := expandCommand(o.customerCmd, map[string]string{
		"host": host, "port": port, "user": cfg.User, "secret": secret, "secret-file": secretFile,
		"domains": strings.Join(cfg.Domains, ","), "sink-host": sinkHost, "sink-port": sinkPort,
	})
	cfg.Fetch = func(ctx context.Context, _ string) odmrtest.CustomerOutcome {
		mark := sink.Mark()
		out := runCommand(ctx, line, secret, codes)
		out.Messages = sink.Since(mark)
		return out
	}
	return cfg, closeAll, nil
}

// startSink starts the SMTP server that stands for the customer's local
// mail server on addr, refusing the recipient refuse; stop shuts it down.
func startSink(addr, refuse string) (sink *smtprecorder.Recorder, at net.Addr, stop func(), err error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, nil, nil, err
	}
	sink = &smtprecorder.Recorder{Refuse: refuse}
	srv := smtp.NewServer(sink)
	srv.Domain = "sink.odmr-conformance.invalid"
	srv.MaxMessageBytes = maxSinkMessage
	go srv.Serve(smtprecorder.StrictEOFListener{Listener: l})
	return sink, l.Addr(), func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if srv.Shutdown(ctx) != nil {
			srv.Close()
		}
	}, nil
}

// secretFileFor returns the file {secret-file} names: -secret-file, or
// else a temporary file of mode 0600 holding secret, which remove
// deletes.
func (o *options) secretFileFor(secret string) (path string, remove func(), err error) {
	if o.secretFile != "" {
		path, err = filepath.Abs(o.secretFile)
		return path, func() {}, err
	}
	dir, err := os.MkdirTemp("", "odmr-conformance-")
	if err != nil {
		return "", nil, err
	}
	remove = func() { os.RemoveAll(dir) }
	path = filepath.Join(dir, "secret")
	if err := os.WriteFile(path, []byte(secret+"\n"), 0o600); err != nil {
		remove()
		return "", nil, err
	}
	return path, remove, nil
}

// byHand is the Fetch hook of a customer the operator runs: it says
// which check waits (ids are the checks that run, in order), waits until
// the suite has ended the session or the check's time is up, and reports
// what reached the sink, the customer's own report unknown.
func byHand(stdout io.Writer, prov *sessionListener, sink *smtprecorder.Recorder, ids []string) func(context.Context, string) odmrtest.CustomerOutcome {
	var n atomic.Int32
	return func(ctx context.Context, _ string) odmrtest.CustomerOutcome {
		if i := int(n.Add(1)) - 1; i < len(ids) {
			fmt.Fprintf(stdout, "waiting for the customer (%s)\n", ids[i])
		}
		mark := sink.Mark()
		prov.waitEnded(ctx)
		return odmrtest.CustomerOutcome{Kind: odmrtest.OutcomeUnknown, Detail: "run by hand", Messages: sink.Since(mark)}
	}
}

// runIDs returns the IDs of the customer checks that run, in order.
func runIDs(skip []string) []string {
	var ids []string
	for _, c := range odmrtest.CustomerChecks() {
		if !slices.Contains(skip, c.ID()) {
			ids = append(ids, c.ID())
		}
	}
	return ids
}

func splitList(s string) []string {
	var out []string
	for _, v := range strings.Split(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			out = append(out, v)
		}
	}
	return out
}

// expandCommand replaces each {name} of vars in tmpl with its value,
// quoted for sh. Other braces are left alone.
func expandCommand(tmpl string, vars map[string]string) string {
	var pairs []string
	for k, v := range vars {
		pairs = append(pairs, "{"+k+"}", shellQuote(v))
	}
	return strings.NewReplacer(pairs...).Replace(tmpl)
}

// shellQuote quotes s as one word for sh.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// runCommand runs the customer command line with sh, with ODMR_SECRET in
// its environment, and maps its exit status to an outcome; a status not
// in codes is OutcomeFailed. When ctx ends the command's process group is
// killed. The secret is redacted from the output kept in Log.
func runCommand(ctx context.Context, line, secret string, codes map[int]odmrtest.OutcomeKind) odmrtest.CustomerOutcome {
	cmd := exec.CommandContext(ctx, "sh", "-c", line)
	cmd.Env = append(os.Environ(), "ODMR_SECRET="+secret)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 2 * time.Second
	var log tailBuffer
	cmd.Stdout, cmd.Stderr = &log, &log
	err := cmd.Run()
	out := odmrtest.CustomerOutcome{Log: log.String()}
	if secret != "" {
		out.Log = strings.ReplaceAll(out.Log, secret, "<redacted>")
	}
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil:
		out.Kind, out.Detail = odmrtest.OutcomeFailed, "killed: "+ctx.Err().Error()
	case errors.As(err, &ee) && ee.ExitCode() < 0:
		out.Kind, out.Detail = odmrtest.OutcomeFailed, ee.String()
	case errors.As(err, &ee):
		k, ok := codes[ee.ExitCode()]
		if !ok {
			k = odmrtest.OutcomeFailed
		}
		out.Kind, out.Detail = k, fmt.Sprintf("exit status %d", ee.ExitCode())
	case err != nil:
		out.Kind, out.Detail = odmrtest.OutcomeFailed, "the command did not run: "+err.Error()
	default:
		k, ok := codes[0]
		if !ok {
			k = odmrtest.OutcomeFailed
		}
		out.Kind, out.Detail = k, "exit status 0"
	}
	return out
}

// tailBuffer keeps the last maxCommandLog bytes written to it. It holds
// up to twice that and drops the excess only then, so that a command
// writing in small pieces does not cost a copy of the whole tail each.
type tailBuffer struct {
	mu  sync.Mutex
	buf []byte
	cut bool
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	if over := len(b.buf) - maxCommandLog; over > maxCommandLog {
		b.buf = append(b.buf[:0], b.buf[over:]...)
		b.cut = true
	}
	return len(p), nil
}

func (b *tailBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	tail := b.buf[max(0, len(b.buf)-maxCommandLog):]
	if b.cut || len(tail) < len(b.buf) {
		return "[output cut to its last " + strconv.Itoa(maxCommandLog) + " bytes]\n" + string(tail)
	}
	return string(tail)
}

// sessionListener is the provider's one listener, at one address for the
// whole run. Each check takes a view of it; closing the view leaves it
// open for the next check.
type sessionListener struct {
	l     net.Listener
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once

	mu    sync.Mutex
	ended chan struct{} // closed when the current check's first connection is closed
}

func newSessionListener(l net.Listener) *sessionListener {
	s := &sessionListener{l: l, conns: make(chan net.Conn), done: make(chan struct{})}
	go func() {
		for {
			nc, err := l.Accept()
			if err != nil {
				return
			}
			select {
			case s.conns <- nc:
			case <-s.done:
				nc.Close()
				return
			}
		}
	}()
	return s
}

// view returns the listener of one check.
func (s *sessionListener) view() (net.Listener, error) {
	select {
	case <-s.done:
		return nil, net.ErrClosed
	default:
	}
	s.mu.Lock()
	s.ended = make(chan struct{})
	ended := s.ended
	s.mu.Unlock()
	return &listenerView{s: s, closed: make(chan struct{}), ended: ended}, nil
}

// waitEnded waits until the current check's first connection has been
// closed by the suite, or ctx ends.
func (s *sessionListener) waitEnded(ctx context.Context) {
	s.mu.Lock()
	ended := s.ended
	s.mu.Unlock()
	select {
	case <-ended:
	case <-ctx.Done():
	}
}

func (s *sessionListener) Close() error {
	s.once.Do(func() { close(s.done) })
	return s.l.Close()
}

type listenerView struct {
	s      *sessionListener
	closed chan struct{}
	once   sync.Once
	first  bool
	ended  chan struct{}
}

func (v *listenerView) Accept() (net.Conn, error) {
	select {
	case nc := <-v.s.conns:
		if v.first {
			return nc, nil
		}
		v.first = true
		return &endConn{Conn: nc, ended: v.ended}, nil
	case <-v.closed:
		return nil, net.ErrClosed
	case <-v.s.done:
		return nil, net.ErrClosed
	}
}

func (v *listenerView) Close() error {
	v.once.Do(func() { close(v.closed) })
	return nil
}

func (v *listenerView) Addr() net.Addr { return v.s.l.Addr() }

// endConn closes ended when it is closed.
type endConn struct {
	net.Conn
	ended chan struct{}
	once  sync.Once
}

func (c *endConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { close(c.ended) })
	return err
}

// CloseWrite lets the suite half-close the connection, as it does with a
// plain TCP one.
func (c *endConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}
