package oneconn

import (
	"context"
	"errors"
	"io"
	"log"
	"net"
	"net/textproto"
	"testing"
	"testing/synctest"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestCustomerListenerAcceptYieldsTheConnectionOnceThenBlocksUntilClose(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a, b := net.Pipe()
		defer b.Close()
		l := New(a)
		c, err := l.Accept()
		require.NoError(t, err)
		assert.Equal(t, a.LocalAddr(), l.Addr())

		second := make(chan error, 1)
		go func() {
			_, err := l.Accept()
			second <- err
		}()
		// Once every goroutine of the bubble is blocked, the second Accept
		// has had every chance to return: it must still be waiting.
		synctest.Wait()
		select {
		case err := <-second:
			t.Fatalf("second Accept returned early: %v", err)
		default:
		}
		require.NoError(t, l.Close())
		require.NoError(t, l.Close(), "Close is idempotent")
		assert.ErrorIs(t, <-second, net.ErrClosed)
		_, err = l.Accept()
		assert.ErrorIs(t, err, net.ErrClosed)

		// Closing the listener leaves the connection alone.
		go b.Write([]byte("x"))
		buf := make([]byte, 1)
		_, err = c.Read(buf)
		require.NoError(t, err)
		c.Close()
	})
}

func TestCustomerListenerDoneClosesWithTheConnection(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	l := New(a)
	c, err := l.Accept()
	require.NoError(t, err)
	select {
	case <-l.Done():
		t.Fatal("Done before Close")
	default:
	}
	require.NoError(t, c.Close())
	<-l.Done()
	c.Close() // a second Close does not panic
}

func TestCustomerListenerCloseBeforeAcceptKeepsTheConnection(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	l := New(a)
	l.Close()
	_, err := l.Accept()
	assert.True(t, errors.Is(err, net.ErrClosed))
}

type nopBackend struct{}

func (nopBackend) NewSession(*smtp.Conn) (smtp.Session, error) { return nopSession{}, nil }

type nopSession struct{}

func (nopSession) Reset()                               {}
func (nopSession) Logout() error                        { return nil }
func (nopSession) Mail(string, *smtp.MailOptions) error { return nil }
func (nopSession) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (nopSession) Data(r io.Reader) error               { _, err := io.Copy(io.Discard, r); return err }

// TestGoSMTPServerOnOneConnectionLeavesNoGoroutine runs go-smtp's server
// the way the customer does after the swap.
func TestCustomerListenerGoSMTPServerOnOneConnectionLeavesNoGoroutine(t *testing.T) {
	// The bubble is the leak check: synctest.Test returns only once every
	// goroutine started in it has ended, and fails the test if any is
	// left blocked for good. No polling of runtime.NumGoroutine, no
	// guess at how long ending takes.
	synctest.Test(t, func(t *testing.T) {
		for _, quit := range []bool{true, false} {
			a, b := net.Pipe()
			srv := smtp.NewServer(nopBackend{})
			srv.Domain = "customer.example.org"
			srv.ErrorLog = log.New(io.Discard, "", 0)
			l := New(a)
			served := make(chan error, 1)
			go func() { served <- srv.Serve(l) }()

			client := textproto.NewConn(b)
			line, err := client.ReadLine()
			require.NoError(t, err)
			assert.Equal(t, "220 customer.example.org ESMTP Service Ready", line)
			if quit {
				client.PrintfLine("QUIT")
				_, _, err = client.ReadResponse(221)
				require.NoError(t, err)
			} else {
				b.Close() // the peer just goes away
			}

			<-l.Done()
			require.NoError(t, srv.Shutdown(context.Background()))
			require.NoError(t, <-served)
			b.Close()
		}
	})
}
