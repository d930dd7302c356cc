package smtptest

import (
	"net"
	"net/textproto"
	"testing"
	"time"
)

// ScriptDeadline bounds a Script's connection: a safety net for a script
// that waits on a peer that is gone, not a measure of anything.
const ScriptDeadline = time.Minute

// Script runs script as the server of the first connection to a loopback
// listener, for a peer too broken or too particular for go-smtp to play,
// and returns the listener's address. wait closes the listener and
// returns once the script has ended; the test's cleanup calls it too.
// The connection is closed when the script returns.
func Script(t testing.TB, script func(tp *textproto.Conn, conn net.Conn)) (addr string, wait func()) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		conn, err := l.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(ScriptDeadline))
		script(textproto.NewConn(conn), conn)
	}()
	wait = func() {
		l.Close()
		<-done
	}
	t.Cleanup(wait)
	return l.Addr().String(), wait
}
