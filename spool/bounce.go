package spool

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/internal/ctxio"
)

// Bouncer sends the delivery status notifications of a [Spool].
type Bouncer interface {
	// Bounce sends dsn, a complete message in RFC 5322 form with CRLF line
	// endings, from the null reverse path (env.From is "") to env.To, the
	// sender of the message that failed. env.ID names the DSN, env.Size,
	// env.Body and env.UTF8 describe it as for any message.
	//
	// nil means the DSN is in the Bouncer's care and the spool forgets it.
	// Any error keeps it in the spool to be tried again later, except an
	// error for which odmr.Permanent is true, after which it is moved to
	// the spool's dead/ directory and logged.
	Bounce(ctx context.Context, env odmr.Envelope, dsn io.Reader) error
}

// BouncerFunc adapts a function to [Bouncer].
type BouncerFunc func(ctx context.Context, env odmr.Envelope, dsn io.Reader) error

// Bounce calls f.
func (f BouncerFunc) Bounce(ctx context.Context, env odmr.Envelope, dsn io.Reader) error {
	return f(ctx, env, dsn)
}

// DirBouncer is a [Bouncer] that writes each DSN to a file <ID>.eml in the
// directory Dir, created if needed. The file appears whole or not at all:
// it is written under a temporary name starting with ".tmp-", fsynced and
// renamed, so readers of the directory must skip names starting with a
// dot; a crash can leave such a file behind, and the DSN is then written
// again. A DSN written again replaces its earlier copy.
type DirBouncer struct {
	Dir string
}

// Bounce writes dsn to d.Dir.
func (d DirBouncer) Bounce(ctx context.Context, env odmr.Envelope, dsn io.Reader) error {
	if err := os.MkdirAll(d.Dir, dirPerm); err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	name := env.ID
	if name == "" || strings.ContainsAny(name, `/\`) || strings.HasPrefix(name, ".") {
		name = newID(env.Received)
	}
	tmp, err := os.CreateTemp(d.Dir, ".tmp-*")
	if err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	_, err = io.Copy(tmp, ctxio.Reader(ctx, dsn))
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), filepath.Join(d.Dir, name+".eml"))
	}
	if err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("spool: writing DSN: %w", err)
	}
	if err := syncDir(d.Dir); err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	return nil
}

var (
	_ Bouncer = BouncerFunc(nil)
	_ Bouncer = DirBouncer{}
	_ Bouncer = (*SMTPBouncer)(nil)
)
