package odmr

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/go-odmr/odmr/internal/sockaddr"
)

// relayGrace is how long a relay waits for one side to finish once the
// other has (the local server's 221 after the provider's QUIT, or the
// provider's close after the local server's).
const relayGrace = 30 * time.Second

// Relay returns a [Handler] that connects to the SMTP server at addr and
// passes the reversed session to it byte for byte in both directions, the
// way fetchmail's ODMR mode does: the local server's 220 greeting becomes
// the customer's, and the provider talks to the local server directly.
// addr is "host:port", or the path of a Unix domain socket ("/path" or
// "unix:/path").
//
// Run by a [Customer], the relay passes the session on command by command
// and refuses, with 550 5.7.1, any recipient outside the customer's
// Domains and AcceptDomains, so that the provider cannot use the local
// server as an open relay; it also hides STARTTLS and AUTH from the
// provider and drops the connection at a bare CR or LF in a message (see
// relay_filter.go). Run outside a Customer, it has no list of domains and
// passes bytes through as they are.
//
// The relay ends when both sides have closed; a side that closes its
// writing half has that passed on to the other. If the local server
// cannot be reached the provider is told with 421, and its mail stays
// queued, and the error matches [ErrLocalDelivery], as does a failure of
// the local server in the middle of the session. Run by a Customer, the
// relay counts in the [FetchResult] the messages, recipients and bytes the
// local server took and the refusals, its own and the local server's,
// reports each message taken to [Customer.Progress], and logs it at
// debug level with the first line of the local server's reply, which
// often names its queue ID; passing bytes through, it sees no messages
// and counts none.
func Relay(addr string) Handler {
	return &relay{addr: addr}
}

type relay struct {
	addr string
}

// ServeReversed relays conn to the local server.
func (r *relay) ServeReversed(ctx context.Context, conn net.Conn) error {
	var d net.Dialer
	network, address := sockaddr.Split(r.addr)
	local, err := d.DialContext(ctx, network, address)
	if err != nil {
		// The provider waits for a greeting: tell it to try later.
		io.WriteString(conn, "421 4.3.0 Local mail server unavailable, try again later\r\n")
		return localErrorf("odmr: relay: connecting to %s: %w", r.addr, err)
	}
	defer local.Close()
	stop := context.AfterFunc(ctx, func() { local.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if accept, ok := AcceptedDomainsFromContext(ctx); ok {
		err := r.serveFiltered(ctx, conn, local, accept)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return err
	}

	toLocal := make(chan error, 1)
	go func() {
		_, err := io.Copy(local, conn)
		if err == nil {
			// The provider is done (after QUIT, or Exim's half-close):
			// pass the half-close on and give the local server a moment
			// to answer and close.
			closeWrite(local)
			local.SetReadDeadline(time.Now().Add(relayGrace))
		} else {
			local.Close()
		}
		toLocal <- err
	}()
	_, errBack := io.Copy(conn, local)
	if errBack == nil {
		closeWrite(conn)
	} else {
		// Wake the copy to the local server, which may be blocked reading
		// the provider.
		conn.Close()
	}
	var errTo error
	select {
	case errTo = <-toLocal:
	case <-time.After(relayGrace):
		// The local server is gone and the provider does not hang up.
		conn.Close()
		errTo = <-toLocal
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	var ne net.Error
	switch {
	case errTo != nil && !errors.Is(errTo, net.ErrClosed):
		return fmt.Errorf("odmr: relay: provider side: %w", errTo)
	case errBack != nil && !errors.Is(errBack, net.ErrClosed) && !(errTo == nil && errors.As(errBack, &ne) && ne.Timeout()):
		// (A timeout after the provider finished is the grace period
		// running out, not a failure.)
		return localErrorf("odmr: relay: local server side: %w", errBack)
	}
	return nil
}

// handlerCountsKey is the context key of the handlerCounts a Customer
// gives its Handler; Relay fills them in.
type handlerCountsKey struct{}

// fetchCounts are what the customer's side of a fetch counts for its
// FetchResult, whether its own SMTP server or a Relay took the session.
type fetchCounts struct {
	messages, recipients  int
	bytes                 int64
	refused, refusedRcpts int
	localRefused          int
	localErr              error
}

// addTo adds the counts to res; the caller holds the lock that guards fc.
func (fc *fetchCounts) addTo(res *FetchResult) {
	res.Messages += fc.messages
	res.Recipients += fc.recipients
	res.Bytes += fc.bytes
	res.Refused += fc.refused
	res.RefusedRecipients += fc.refusedRcpts
	res.LocalRefused += fc.localRefused
	if res.LocalErr == nil {
		res.LocalErr = fc.localErr
	}
}

// handlerCounts are what a Relay run by a Customer counts, with the
// Customer's progress function (nil: none) and logger.
type handlerCounts struct {
	progress func(fetchCounts)
	log      *slog.Logger

	mu sync.Mutex
	fetchCounts
}

func countsFromContext(ctx context.Context) *handlerCounts {
	if hc, ok := ctx.Value(handlerCountsKey{}).(*handlerCounts); ok {
		return hc
	}
	return &handlerCounts{log: slog.New(slog.DiscardHandler)}
}

// add adds the counts to res.
func (hc *handlerCounts) add(res *FetchResult) {
	hc.mu.Lock()
	defer hc.mu.Unlock()
	hc.addTo(res)
}

// taken counts a message the local server took for rcpts recipients,
// and reports it.
func (hc *handlerCounts) taken(rcpts int, bytes int64) {
	hc.mu.Lock()
	hc.messages++
	hc.recipients += rcpts
	hc.bytes += bytes
	fc := hc.fetchCounts
	hc.mu.Unlock()
	if hc.progress != nil {
		hc.progress(fc)
	}
}

// count runs f with the counts locked.
func (hc *handlerCounts) count(f func(hc *handlerCounts)) {
	hc.mu.Lock()
	defer hc.mu.Unlock()
	f(hc)
}
