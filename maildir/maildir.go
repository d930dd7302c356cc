// Package maildir delivers mail into a Maildir, the one-file-per-message
// mailbox format of qmail (https://cr.yp.to/proto/maildir.html) that
// Dovecot, Courier, mutt and most mail readers understand.
//
// [Sink] is an [odmr.MessageSink]: give it to an [odmr.Customer] to store
// the mail it collects.
package maildir

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/go-odmr/odmr"
)

// Sink writes each message it is given into a Maildir as one file, the
// way the Maildir specification prescribes: the message is written to a
// file under tmp/ with a unique name, synced to disk, renamed into new/,
// and new/ itself is synced, so that a message acknowledged to the
// provider survives a crash. A failed delivery leaves nothing behind.
//
// A Sink is safe for concurrent use, also by several processes delivering
// into the same Maildir.
type Sink struct {
	// Dir is the Maildir: the directory holding tmp/, new/ and cur/.
	Dir string

	// KeepCRLF stores messages with the CRLF line endings they have on
	// the wire. False means each CRLF becomes a bare LF, the convention of
	// Maildir delivery agents (qmail, Dovecot) that mail readers expect.
	KeepCRLF bool

	// NoReturnPath turns off the "Return-Path: <sender>" header that a
	// Sink prepends by default, as a final delivery agent does (RFC 5321
	// section 4.4): without it the envelope sender, the address bounces
	// go to, is lost once the message is in the mailbox.
	NoReturnPath bool
	// NoDeliveredTo turns off the "Delivered-To: <recipient>" headers a
	// Sink prepends by default, one for each recipient of the envelope,
	// as qmail and Postfix local delivery do. They reveal every envelope
	// recipient, Bcc included, to whoever reads the mailbox: set it when
	// several people read one Maildir.
	NoDeliveredTo bool

	// Hostname is the host part of file names. "" means os.Hostname().
	Hostname string
}

// New returns a Sink for the Maildir at dir, creating dir, tmp/, new/ and
// cur/ (mode 0700) where they do not exist.
func New(dir string) (*Sink, error) {
	for _, sub := range []string{"", "tmp", "new", "cur"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o700); err != nil {
			return nil, fmt.Errorf("odmr: maildir: %w", err)
		}
	}
	return &Sink{Dir: dir}, nil
}

var counter atomic.Uint64

// uniqueName returns a file name that no other delivery into the same
// Maildir can produce: "SECONDS.M<micro>P<pid>Q<counter>R<random>.HOST",
// the form of the Maildir specification's modern recommendation.
func (s *Sink) uniqueName(now time.Time) (string, error) {
	var r [8]byte
	if _, err := rand.Read(r[:]); err != nil {
		return "", err
	}
	host := s.Hostname
	if host == "" {
		host, _ = os.Hostname()
		if host == "" {
			host = "localhost"
		}
	}
	// The specification escapes "/" and ":" in the host name.
	host = strings.NewReplacer("/", `\057`, ":", `\072`).Replace(host)
	return fmt.Sprintf("%d.M%06dP%dQ%dR%s.%s",
		now.Unix(), now.Nanosecond()/1000, os.Getpid(), counter.Add(1), hex.EncodeToString(r[:]), host), nil
}

// Deliver stores one message in new/. It reads body to the end. The
// message is in new/, and on disk, when Deliver returns nil; on any error
// the file under tmp/ is removed and nothing is delivered.
func (s *Sink) Deliver(ctx context.Context, env odmr.Envelope, body io.Reader) (err error) {
	name, err := s.uniqueName(time.Now())
	if err != nil {
		return fmt.Errorf("odmr: maildir: %w", err)
	}
	tmp := filepath.Join(s.Dir, "tmp", name)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("odmr: maildir: %w", err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()

	w := bufio.NewWriterSize(f, 64<<10)
	if err := s.writeHeaders(w, env); err != nil {
		return fmt.Errorf("odmr: maildir: %w", err)
	}
	var dst io.Writer = w
	var lf *lfWriter
	if !s.KeepCRLF {
		lf = &lfWriter{w: w}
		dst = lf
	}
	src := &readErr{r: body}
	if _, err := io.Copy(dst, src); err != nil {
		if src.err != nil {
			// The body broke (a cut connection, a refused message): the
			// error is the reader's, not the Maildir's.
			return src.err
		}
		return fmt.Errorf("odmr: maildir: %w", err)
	}
	if lf != nil {
		if err := lf.flush(); err != nil {
			return fmt.Errorf("odmr: maildir: %w", err)
		}
	}
	if err := w.Flush(); err != nil {
		return fmt.Errorf("odmr: maildir: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("odmr: maildir: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("odmr: maildir: %w", err)
	}
	newDir := filepath.Join(s.Dir, "new")
	final := filepath.Join(newDir, name)
	if err := os.Rename(tmp, final); err != nil {
		return fmt.Errorf("odmr: maildir: %w", err)
	}
	if err := syncDir(newDir); err != nil {
		// The message is in new/ but perhaps not on disk: take it back, so
		// that the provider's next attempt does not make a duplicate.
		os.Remove(final)
		return fmt.Errorf("odmr: maildir: %w", err)
	}
	return nil
}

func (s *Sink) writeHeaders(w *bufio.Writer, env odmr.Envelope) error {
	eol := "\n"
	if s.KeepCRLF {
		eol = "\r\n"
	}
	if !s.NoReturnPath {
		if err := checkHeaderValue(env.From); err != nil {
			return err
		}
		fmt.Fprintf(w, "Return-Path: <%s>%s", env.From, eol)
	}
	if !s.NoDeliveredTo {
		for _, to := range env.To {
			if err := checkHeaderValue(to); err != nil {
				return err
			}
			fmt.Fprintf(w, "Delivered-To: %s%s", to, eol)
		}
	}
	return nil
}

// checkHeaderValue refuses an address that would break the header it goes
// into.
func checkHeaderValue(s string) error {
	if strings.ContainsAny(s, "\r\n\x00") {
		return errors.New("address contains CR, LF or NUL")
	}
	return nil
}

// syncDir flushes a directory entry to disk.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// readErr remembers the error of the reader it wraps.
type readErr struct {
	r   io.Reader
	err error
}

func (r *readErr) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if err != nil && err != io.EOF {
		r.err = err
	}
	return n, err
}

// lfWriter turns CRLF into LF, leaving any other CR alone. It holds back a
// CR that ends a write until it sees the next byte.
type lfWriter struct {
	w      io.Writer
	heldCR bool
	buf    []byte
}

func (l *lfWriter) Write(p []byte) (int, error) {
	out := l.buf[:0]
	for _, c := range p {
		if l.heldCR {
			l.heldCR = false
			if c != '\n' {
				out = append(out, '\r')
			}
		}
		if c == '\r' {
			l.heldCR = true
			continue
		}
		out = append(out, c)
	}
	l.buf = out
	if _, err := l.w.Write(out); err != nil {
		return 0, err
	}
	return len(p), nil
}

// flush writes a CR held back at the very end of the message.
func (l *lfWriter) flush() error {
	if l.heldCR {
		l.heldCR = false
		_, err := l.w.Write([]byte{'\r'})
		return err
	}
	return nil
}

var _ odmr.MessageSink = (*Sink)(nil)
