package spool

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"slices"
	"strings"
	"time"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/internal/wire"
)

// The envelope file.
//
// Each queued message is two files side by side in queue/: <id>.eml, the
// body, written once and never changed, and <id>.json, the envelope and
// the state of every recipient, replaced atomically on every change. The
// envelope is the commit record: a message exists when, and only when, its
// .json exists.
//
// The JSON carries "version": 1. Fields may be added to version 1 (readers
// ignore what they do not know); any change an older reader would get
// wrong takes a new version number, and a reader skips, logs and keeps a
// file whose version it does not know, so a spool survives both an upgrade
// and a rollback. The outbox of delivery status notifications, dsn/, uses
// the same format.

// envelopeVersion is the version of the envelope format this package
// writes and the only one it reads.
const envelopeVersion = 1

// maxEnvelopeSize bounds the envelope files read; anything larger is not
// one of ours.
const maxEnvelopeSize = 64 << 20

// State is the delivery state of one recipient of a queued message.
type State string

const (
	// Queued: not delivered yet; the recipient is offered to the next
	// session for its domain.
	Queued State = "queued"
	// Delivered: the customer accepted the message for the recipient.
	Delivered State = "delivered"
	// Failed: the customer refused the recipient permanently, or the
	// message expired; a delivery status notification went to the sender
	// unless the sender was null.
	Failed State = "failed"
)

// envelopeFile is the JSON form of an envelope.
type envelopeFile struct {
	Version    int             `json:"version"`
	ID         string          `json:"id"`
	From       string          `json:"from"`
	Received   time.Time       `json:"received"`
	Size       int64           `json:"size"`
	Body       odmr.BodyType   `json:"body,omitempty"`
	UTF8       bool            `json:"utf8,omitempty"`
	Recipients []recipientFile `json:"recipients"`

	// Ret and EnvID are the DSN parameters of MAIL FROM (RFC 3461): RET
	// and ENVID, decoded.
	Ret   odmr.DSNReturn `json:"ret,omitempty"`
	EnvID string         `json:"envid,omitempty"`

	// ReportFor is set on a DSN in the outbox: the ID of the message whose
	// failure it reports.
	ReportFor string `json:"report_for,omitempty"`
	// NextAttempt is when a DSN that could not be handed to the Bouncer is
	// tried again.
	NextAttempt time.Time `json:"next_attempt,omitzero"`

	// Held is set by Spool.Hold: the queued recipients have no markers and
	// are not offered to any session until Spool.Release.
	Held bool `json:"held,omitempty"`
}

type recipientFile struct {
	Addr        string     `json:"addr"`
	State       State      `json:"state"`
	Attempts    int        `json:"attempts,omitempty"`
	LastAttempt time.Time  `json:"last_attempt,omitzero"`
	LastError   *errorFile `json:"last_error,omitempty"`
	// Done is when the recipient left the queue (delivered or failed).
	Done time.Time `json:"done,omitzero"`

	// Notify, ORcptType and ORcpt are the DSN parameters of the
	// recipient's RCPT TO (RFC 3461): NOTIFY, and ORCPT decoded.
	Notify    []odmr.DSNNotify `json:"notify,omitempty"`
	ORcptType string           `json:"orcpt_type,omitempty"`
	ORcpt     string           `json:"orcpt,omitempty"`
}

// errorFile records an error: the SMTP reply when there was one, and the
// error's text.
type errorFile struct {
	Code     int    `json:"code,omitempty"`
	Enhanced string `json:"enhanced,omitempty"`
	Message  string `json:"message,omitempty"`
	Text     string `json:"text"`
}

// errUnknownVersion marks an envelope written by another version of the
// package; it is skipped, not repaired.
var errUnknownVersion = errors.New("unknown envelope version")

// readEnvelope reads and checks the envelope at path, written for id. A
// missing file gives an error matching fs.ErrNotExist.
func readEnvelope(path, id string) (*envelopeFile, error) {
	f, err := openRegular(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxEnvelopeSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxEnvelopeSize {
		return nil, fmt.Errorf("spool: envelope %s: larger than %d bytes", path, maxEnvelopeSize)
	}
	return parseEnvelope(data, path, id)
}

func parseEnvelope(data []byte, path, id string) (*envelopeFile, error) {
	var v struct {
		Version int `json:"version"`
	}
	if err := json.Unmarshal(data, &v); err != nil {
		return nil, fmt.Errorf("spool: envelope %s: %w", path, err)
	}
	if v.Version != envelopeVersion {
		return nil, fmt.Errorf("spool: envelope %s: %w %d (this package reads version %d)", path, errUnknownVersion, v.Version, envelopeVersion)
	}
	e := new(envelopeFile)
	if err := json.Unmarshal(data, e); err != nil {
		return nil, fmt.Errorf("spool: envelope %s: %w", path, err)
	}
	if err := e.check(id); err != nil {
		return nil, fmt.Errorf("spool: envelope %s: %w", path, err)
	}
	return e, nil
}

// check rejects an envelope that cannot have been written by this
// package: whatever it holds, acting on it could lose or duplicate mail.
func (e *envelopeFile) check(id string) error {
	switch {
	case e.ID != id:
		return fmt.Errorf("written for message %q", e.ID)
	case len(e.Recipients) == 0:
		return errors.New("no recipients")
	case e.Received.IsZero():
		return errors.New("no arrival time")
	case e.Size < 0:
		return errors.New("negative size")
	case badAddr(e.From):
		return fmt.Errorf("invalid sender %q", e.From)
	}
	for _, r := range e.Recipients {
		if r.Addr == "" || badAddr(r.Addr) {
			return fmt.Errorf("invalid recipient %q", r.Addr)
		}
		switch r.State {
		case Queued, Delivered, Failed:
		default:
			return fmt.Errorf("recipient %s has unknown state %q", r.Addr, r.State)
		}
	}
	return nil
}

// badAddr reports whether an address holds control characters, which no
// SMTP path can and which would let it break out of a command or a header.
func badAddr(a string) bool {
	return strings.ContainsFunc(a, func(r rune) bool { return r < 0x20 || r == 0x7f })
}

// write replaces the envelope file at path atomically.
func (e *envelopeFile) write(tmpDir, path string) error {
	data, err := json.MarshalIndent(e, "", "\t")
	if err != nil {
		return err
	}
	return writeAtomic(tmpDir, path, append(data, '\n'))
}

// queued reports whether any recipient is still queued.
func (e *envelopeFile) queued() bool {
	for _, r := range e.Recipients {
		if r.State == Queued {
			return true
		}
	}
	return false
}

// queuedIn reports whether a recipient whose domain lives in directory dir
// is still queued, and offered: a held message is queued nowhere.
func (e *envelopeFile) queuedIn(dir string) bool {
	if e.Held {
		return false
	}
	for _, r := range e.Recipients {
		if r.State == Queued && dirName(odmr.RecipientDomain(r.Addr)) == dir {
			return true
		}
	}
	return false
}

// queuedDirs returns the domain directories of the queued recipients,
// each with its domain; none for a held message.
func (e *envelopeFile) queuedDirs() map[string]string {
	dirs := make(map[string]string)
	if e.Held {
		return dirs
	}
	for _, r := range e.Recipients {
		if r.State == Queued {
			d := odmr.RecipientDomain(r.Addr)
			dirs[dirName(d)] = d
		}
	}
	return dirs
}

// envelope returns the odmr.Envelope of the message, with To holding the
// given recipients.
func (e *envelopeFile) envelope(to []string) odmr.Envelope {
	env := odmr.Envelope{
		ID:       e.ID,
		From:     e.From,
		To:       to,
		Size:     e.Size,
		Body:     e.Body,
		UTF8:     e.UTF8,
		Received: e.Received,
	}
	if e.Ret != "" || e.EnvID != "" {
		env.DSN = &odmr.DSN{Return: e.Ret, EnvID: e.EnvID}
	}
	for _, r := range e.Recipients {
		if (r.Notify == nil && r.ORcpt == "") || !slices.Contains(to, r.Addr) {
			continue
		}
		if env.DSN == nil {
			env.DSN = &odmr.DSN{}
		}
		if env.DSN.Recipients == nil {
			env.DSN.Recipients = make(map[string]odmr.RecipientDSN)
		}
		env.DSN.Recipients[r.Addr] = odmr.RecipientDSN{Notify: slices.Clone(r.Notify), ORcptType: r.ORcptType, ORcpt: r.ORcpt}
	}
	return env
}

// dsn returns the DSN requests of the message as odmr.DSN, for reports.
func (e *envelopeFile) dsn() *odmr.DSN {
	all := make([]string, len(e.Recipients))
	for i, r := range e.Recipients {
		all[i] = r.Addr
	}
	return e.envelope(all).DSN
}

// recordError turns err into its stored form.
func recordError(err error) *errorFile {
	if err == nil {
		return nil
	}
	ef := &errorFile{Text: err.Error()}
	if e := odmr.AsError(err); e != nil {
		ef.Code = e.Code
		ef.Enhanced = e.EnhancedCode.String()
		ef.Message = e.Message
	}
	return ef
}

// err returns the stored error: its text is the original error's, and it
// wraps the SMTP reply, when there was one, as an *odmr.Error.
func (ef *errorFile) err() error {
	if ef == nil {
		return nil
	}
	return &storedError{text: ef.Text, reply: ef.reply()}
}

// reply returns the SMTP reply recorded, or nil.
func (ef *errorFile) reply() *odmr.Error {
	if ef == nil || ef.Code == 0 {
		return nil
	}
	ec, _ := wire.ParseEnhancedCode(ef.Enhanced)
	return &odmr.Error{Code: ef.Code, EnhancedCode: ec, Message: ef.Message}
}

// storedError is an error read back from an envelope.
type storedError struct {
	text  string
	reply *odmr.Error
}

func (e *storedError) Error() string { return e.text }

func (e *storedError) Unwrap() error {
	if e.reply == nil {
		return nil
	}
	return e.reply
}

// isNotExist reports whether err says a file is missing.
func isNotExist(err error) bool { return errors.Is(err, fs.ErrNotExist) }

// allDirs returns the domain directory of every recipient, with its
// domain.
func (e *envelopeFile) allDirs() map[string]string {
	dirs := make(map[string]string)
	for _, r := range e.Recipients {
		d := odmr.RecipientDomain(r.Addr)
		dirs[dirName(d)] = d
	}
	return dirs
}
