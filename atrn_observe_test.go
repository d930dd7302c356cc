package odmr

import (
	"context"
	"io"
	"net"
	"net/textproto"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/go-odmr/odmr/odmrtrace"
)

// countingQueue counts the calls to HasMail.
type countingQueue struct {
	memQueue
	hasMail atomic.Int32
}

func (q *countingQueue) HasMail(ctx context.Context, domains []string) (bool, error) {
	q.hasMail.Add(1)
	return q.memQueue.HasMail(ctx, domains)
}

// countingAuthorizer counts the calls to Domains.
type countingAuthorizer struct {
	DomainAuthorizer
	domains atomic.Int32
}

func (a *countingAuthorizer) Domains(ctx context.Context, identity string) ([]string, error) {
	a.domains.Add(1)
	return a.DomainAuthorizer.Domains(ctx, identity)
}

// TestEachATRNObservedOnce: the Trace hears of every ATRN exactly once,
// with the code of the reply the customer got, whether it is refused,
// refused with the 421 of MaxErrors, or granted with a 250 that cannot
// be written; and the Authorizer and HasMail are asked at most once per
// command.
func TestEachATRNObservedOnce(t *testing.T) {
	var mu sync.Mutex
	var got []odmrtrace.ATRNEvent
	q := &countingQueue{memQueue: newMemQueue()}
	var authz *countingAuthorizer
	p := pipeProvider(io.Discard, func(p *Provider) {
		authz = &countingAuthorizer{DomainAuthorizer: p.Authorizer}
		p.Authorizer, p.Queue = authz, q
		p.MaxErrors = 2
		p.Trace = &odmrtrace.ProviderTrace{ATRN: func(e odmrtrace.ATRNEvent) {
			mu.Lock()
			got = append(got, e)
			mu.Unlock()
		}}
	})
	defer p.Close()
	events := func() []odmrtrace.ATRNEvent {
		mu.Lock()
		defer mu.Unlock()
		return append([]odmrtrace.ATRNEvent(nil), got...)
	}

	// Refusals, the last one by MaxErrors.
	c, _ := pipeDial(t, p, "", 220)
	c.cmd(530, "ATRN")
	c.login()
	c.cmd(450, "ATRN example.net")
	c.cmd(453, "ATRN example.org")
	c.cmd(421, "ATRN !")
	c.expectClosed()
	assert.Equal(t, []odmrtrace.ATRNEvent{{Code: 530}, {Identity: testUser, Code: 450}, {Identity: testUser, Code: 453}, {Identity: testUser, Code: 421}}, events())
	assert.EqualValues(t, 2, authz.domains.Load(), "the Authorizer, once for each ATRN that got that far")
	assert.EqualValues(t, 1, q.hasMail.Load(), "HasMail, once for the ATRN that got that far")

	// Granted, but the customer is gone before the 250.
	_, err := q.Enqueue(Envelope{From: "s@x.test", To: []string{"u@example.org"}}, strings.NewReader("Subject: x\r\n\r\nhi\r\n"))
	require.NoError(t, err)
	mu.Lock()
	got = nil
	mu.Unlock()
	server, conn := net.Pipe()
	served := make(chan error, 1)
	go func() { served <- p.Serve(server) }()
	c = &client{t: t, conn: conn, tp: textproto.NewConn(conn)}
	c.expect(220)
	c.login()
	hasMail := q.hasMail.Load()
	// net.Pipe's write returns once the provider has read the line; it
	// then finds the pipe closed when it answers.
	require.NoError(t, c.tp.PrintfLine("ATRN example.org"))
	conn.Close()
	assert.Error(t, <-served)
	assert.Equal(t, []odmrtrace.ATRNEvent{{Identity: testUser, Code: 250}}, events())
	assert.Equal(t, hasMail+1, q.hasMail.Load())
	assert.Equal(t, 1, q.Len(), "the message stays queued")
}
