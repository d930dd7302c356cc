// Package pgtest gives the tests of this module a PostgreSQL database of
// their own: a private server, started once per test binary in a
// temporary directory, and a fresh database per test.
//
// A package whose tests use it runs them through [Main]:
//
//	func TestMain(m *testing.M) { pgtest.Main(m) }
//
// and each test asks for a database with [DSN]. The server starts on the
// first call (initdb, then postgres listening only on a unix socket in the
// temporary directory, with fsync off), as the postgres user when the
// tests run as root, and Main stops it and removes its files when the
// tests are done. ODMR_PG_DSN, when set, names an existing server to use
// instead (a URL or keyword/value connection string of a role that may
// create databases).
//
// When PostgreSQL is not installed the tests that need it are skipped,
// unless CI is set: then they fail, since .ci/run must install it.
package pgtest

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// EnvDSN is the environment variable that points the tests at an existing
// server.
const EnvDSN = "ODMR_PG_DSN"

var (
	mu      sync.Mutex
	srv     *server
	srvErr  error
	started bool
	// mainRan is set by Main: without it the server would outlive the
	// test binary.
	mainRan bool
)

// Main runs the tests of m, stops the server if one was started, and
// exits with the tests' status. Call it from TestMain.
func Main(m *testing.M) {
	mu.Lock()
	mainRan = true
	mu.Unlock()
	code := m.Run()
	mu.Lock()
	s := srv
	srv = nil
	mu.Unlock()
	if s != nil {
		if err := s.stop(); err != nil {
			fmt.Fprintln(os.Stderr, "pgtest:", err)
		}
	}
	os.Exit(code)
}

// StartTime returns how long the private server took to start (initdb
// included), or 0 when none was started.
func StartTime() time.Duration {
	mu.Lock()
	defer mu.Unlock()
	if srv == nil {
		return 0
	}
	return srv.startTime
}

// DSN returns the connection string (a URL) of a new, empty database that
// is dropped when t ends. It skips or fails t as the package doc says when
// PostgreSQL is missing.
func DSN(t testing.TB) string {
	t.Helper()
	base := baseDSN(t)
	name := "t_" + randomHex(8)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, base)
	if err != nil {
		t.Fatalf("pgtest: connect: %v", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("pgtest: create database: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		conn, err := pgx.Connect(ctx, base)
		if err != nil {
			t.Errorf("pgtest: connect to drop %s: %v", name, err)
			return
		}
		defer conn.Close(ctx)
		// WITH (FORCE) ends sessions a test left open (PostgreSQL 13).
		if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			t.Errorf("pgtest: drop database %s: %v", name, err)
		}
	})
	dsn, err := withDatabase(base, name)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	return dsn
}

// baseDSN returns the DSN of the server's maintenance database, starting
// the private server on first use.
func baseDSN(t testing.TB) string {
	t.Helper()
	if dsn := os.Getenv(EnvDSN); dsn != "" {
		return dsn
	}
	mu.Lock()
	defer mu.Unlock()
	if !mainRan {
		t.Fatalf("pgtest: the package's TestMain must call pgtest.Main, which stops the server")
	}
	if !started {
		started = true
		bin, err := findBinaries()
		if err != nil {
			srvErr = err
		} else {
			srv, srvErr = start(bin)
		}
	}
	if srvErr != nil {
		var missing *missingError
		if errors.As(srvErr, &missing) {
			if os.Getenv("CI") != "" {
				t.Fatalf("pgtest: %v, and CI is set: .ci/run must install it (apt-get install postgresql)", srvErr)
			}
			t.Skipf("pgtest: %v (apt-get install postgresql, or set %s); skipping outside CI", srvErr, EnvDSN)
		}
		t.Fatalf("pgtest: %v", srvErr)
	}
	return srv.dsn
}

type missingError struct{ what string }

func (e *missingError) Error() string { return e.what + " not found" }

// findBinaries returns the directory holding initdb and postgres: from
// PATH, or the newest /usr/lib/postgresql/*/bin (Debian keeps them there).
func findBinaries() (string, error) {
	if p, err := exec.LookPath("postgres"); err == nil {
		if _, err := exec.LookPath("initdb"); err == nil {
			return filepath.Dir(p), nil
		}
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	slices.SortFunc(dirs, func(a, b string) int {
		va, vb := versionOf(a), versionOf(b)
		return va - vb
	})
	for i := len(dirs) - 1; i >= 0; i-- {
		if isExec(filepath.Join(dirs[i], "postgres")) && isExec(filepath.Join(dirs[i], "initdb")) {
			return dirs[i], nil
		}
	}
	return "", &missingError{"PostgreSQL (initdb and postgres)"}
}

func versionOf(bin string) int {
	var v int
	fmt.Sscanf(filepath.Base(filepath.Dir(bin)), "%d", &v)
	return v
}

func isExec(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

type server struct {
	dir       string
	cmd       *exec.Cmd
	dsn       string
	startTime time.Duration
	exited    chan struct{}
	log       *logTail
}

// start runs initdb and postgres in a new temporary directory and waits
// until the server says it accepts connections.
func start(bin string) (_ *server, err error) {
	t0 := time.Now()
	removeStale()
	// A short path: the socket's path must fit in sun_path.
	dir, err := os.MkdirTemp("", "pgtest-")
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			os.RemoveAll(dir)
		}
	}()
	user, err := prepareOwner(dir)
	if err != nil {
		return nil, err
	}
	data := filepath.Join(dir, "data")
	initdb := command(filepath.Join(bin, "initdb"), "-D", data, "-U", "postgres",
		"--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions")
	if out, err := initdb.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("initdb: %v\n%s", err, out)
	}
	s := &server{dir: dir, exited: make(chan struct{}), log: &logTail{}}
	s.cmd = command(filepath.Join(bin, "postgres"), "-D", data,
		"-c", "listen_addresses=",
		"-c", "unix_socket_directories="+dir,
		"-c", "fsync=off",
		"-c", "synchronous_commit=off",
		"-c", "full_page_writes=off",
		"-c", "max_connections=300",
		"-c", "log_min_messages=warning")
	s.cmd.Dir = dir
	stderr, err := s.cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := s.cmd.Start(); err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		once := sync.Once{}
		for sc.Scan() {
			line := sc.Text()
			s.log.add(line)
			if strings.Contains(line, "ready to accept connections") {
				once.Do(func() { close(ready) })
			}
		}
	}()
	go func() {
		s.cmd.Wait()
		close(s.exited)
	}()
	select {
	case <-ready:
	case <-s.exited:
		return nil, fmt.Errorf("postgres exited while starting:\n%s", s.log)
	case <-time.After(2 * time.Minute):
		s.cmd.Process.Kill()
		<-s.exited
		return nil, fmt.Errorf("postgres did not start in 2 minutes:\n%s", s.log)
	}
	s.dsn = (&url.URL{Scheme: "postgres", User: url.User(user), Path: "/postgres",
		RawQuery: url.Values{"host": {dir}, "sslmode": {"disable"}}.Encode()}).String()
	s.startTime = time.Since(t0)
	if testing.Verbose() {
		fmt.Fprintf(os.Stderr, "pgtest: PostgreSQL started in %v\n", s.startTime.Round(time.Millisecond))
	}
	return s, nil
}

// stop shuts the server down (fast: sessions are ended) and removes its
// directory.
func (s *server) stop() error {
	s.cmd.Process.Signal(os.Interrupt)
	select {
	case <-s.exited:
	case <-time.After(time.Minute):
		s.cmd.Process.Kill()
		<-s.exited
	}
	return os.RemoveAll(s.dir)
}

// removeStale removes the directories of servers whose test binary died
// before Main could stop them (a panic, a timeout): the death signal
// stopped the server, but its files stay. A directory is stale when no
// process has its postmaster.pid's number and nothing in it changed for
// ten minutes, so a server another binary is starting is left alone.
func removeStale() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "pgtest-*"))
	for _, dir := range dirs {
		fi, err := os.Stat(dir)
		if err != nil || time.Since(fi.ModTime()) < 10*time.Minute {
			continue
		}
		if data, err := os.ReadFile(filepath.Join(dir, "data", "postmaster.pid")); err == nil {
			var pid int
			fmt.Sscan(string(data), &pid)
			if pid > 0 && processAlive(pid) {
				continue
			}
		}
		os.RemoveAll(dir)
	}
}

// withDatabase returns dsn naming database name instead.
func withDatabase(dsn, name string) (string, error) {
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err != nil {
			return "", fmt.Errorf("%s: %w", EnvDSN, err)
		}
		u.Path = "/" + name
		return u.String(), nil
	}
	// Keyword/value form: a later keyword overrides an earlier one.
	return dsn + " dbname=" + name, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// logTail keeps the last lines the server logged, for error messages.
type logTail struct {
	mu    sync.Mutex
	lines []string
}

func (l *logTail) add(line string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, line)
	if len(l.lines) > 50 {
		l.lines = l.lines[len(l.lines)-50:]
	}
}

func (l *logTail) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}
