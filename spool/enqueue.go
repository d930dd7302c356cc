package spool

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"time"
	"unicode/utf8"

	"github.com/go-odmr/odmr"
)

// Enqueue adds a message for env.From and env.To with the body read from
// body, and returns its ID once the message is on stable storage: a crash
// at any instant leaves either the whole message queued or nothing, and
// nil is returned only in the first case.
//
// The body is streamed to a file, never held in memory; bare LF line
// endings become CRLF on the way. Size and Body (8BITMIME when the body
// has 8-bit bytes, 7BIT otherwise, whatever was declared, but for
// BINARYMIME) come from the content; UTF8 is set when an address is not
// ASCII, and Received when it is zero. env.ID is ignored:
// the spool names its messages. Duplicate recipients are queued once.
//
// When a domain of the recipients is over its quota, Enqueue returns an
// *odmr.Error with code 452 and enhanced code 4.2.2 and queues nothing. An
// invalid address gives a 501 *odmr.Error.
func (s *Spool) Enqueue(ctx context.Context, env odmr.Envelope, body io.Reader) (id string, err error) {
	if err := s.checkOpen(); err != nil {
		return "", err
	}
	if len(env.To) == 0 {
		return "", errors.New("spool: message has no recipients")
	}
	if badAddr(env.From) {
		return "", &odmr.Error{Code: 501, EnhancedCode: odmr.EnhancedCode{5, 1, 7}, Message: "Bad sender address syntax"}
	}
	var rcpts []string
	dirs := make(map[string]string)
	for _, r := range env.To {
		if r == "" || badAddr(r) {
			return "", &odmr.Error{Code: 501, EnhancedCode: odmr.EnhancedCode{5, 1, 3}, Message: "Bad recipient address syntax"}
		}
		if !slices.Contains(rcpts, r) {
			rcpts = append(rcpts, r)
			d := odmr.RecipientDomain(r)
			dirs[dirName(d)] = d
		}
	}
	res, err := s.reserve(dirs)
	if err != nil {
		return "", err
	}
	defer s.release(res)

	now := time.Now()
	if env.Received.IsZero() {
		env.Received = now
	}
	id = newID(now)
	// On failure, undo in reverse order, then unlock: until the locks go,
	// no one else acts on any of these files.
	var cleanup []func()
	var locked []*os.File
	defer func() {
		if err != nil {
			for i := len(cleanup) - 1; i >= 0; i-- {
				cleanup[i]()
			}
		}
		for _, f := range locked {
			f.Close()
		}
	}()

	// The body, locked until the envelope is committed, so that no one
	// takes it for the debris of a crash.
	bodyFile, err := createTemp(s.path(tmpDir), "eml")
	if err != nil {
		return "", fmt.Errorf("spool: %w", err)
	}
	bodyPath := bodyFile.Name()
	cleanup = append(cleanup, func() { os.Remove(bodyPath) })
	locked = append(locked, bodyFile)
	if _, err := tryLock(bodyFile); err != nil {
		return "", err
	}
	left, limited := s.bytesLeft(res)
	w := &crlfWriter{w: bufio.NewWriterSize(bodyFile, 32<<10), limit: left}
	if _, err := io.Copy(w, &ctxReader{ctx, body}); err != nil {
		if errors.Is(err, errTooBig) {
			return "", errQuota(limited)
		}
		return "", fmt.Errorf("spool: reading message: %w", err)
	}
	if err := w.w.Flush(); err != nil {
		return "", fmt.Errorf("spool: %w", err)
	}
	if err := bodyFile.Sync(); err != nil {
		return "", fmt.Errorf("spool: %w", err)
	}
	if err := s.reserveBytes(res, w.n); err != nil {
		return "", err
	}

	env.Size = w.n
	// The content decides, not the declaration: intakes (go-smtp's client
	// among them) declare BODY=8BITMIME for 7-bit mail too, and a 7-bit
	// message may go to a customer without 8BITMIME.
	if env.Body != odmr.BodyBinaryMIME {
		env.Body = ""
		if w.eightBit {
			env.Body = odmr.Body8BitMIME
		}
	}
	if !env.UTF8 {
		env.UTF8 = !isASCII(env.From)
		for _, r := range rcpts {
			env.UTF8 = env.UTF8 || !isASCII(r)
		}
	}
	ef := &envelopeFile{
		Version: envelopeVersion, ID: id, From: env.From, Received: env.Received,
		Size: env.Size, Body: env.Body, UTF8: env.UTF8,
	}
	if env.DSN != nil {
		ef.Ret, ef.EnvID = env.DSN.Return, env.DSN.EnvID
	}
	for _, r := range rcpts {
		rf := recipientFile{Addr: r, State: Queued}
		if env.DSN != nil {
			if d, ok := env.DSN.Recipients[r]; ok {
				rf.Notify, rf.ORcptType, rf.ORcpt = slices.Clone(d.Notify), d.ORcptType, d.ORcpt
			}
		}
		ef.Recipients = append(ef.Recipients, rf)
	}
	data, err := json.MarshalIndent(ef, "", "\t")
	if err != nil {
		return "", err
	}
	envTmp, err := writeTemp(s.path(tmpDir), "json", append(data, '\n'))
	if err != nil {
		return "", fmt.Errorf("spool: %w", err)
	}
	cleanup = append(cleanup, func() { os.Remove(envTmp) })

	// The markers, locked until the commit: no one can lease the message
	// before it exists, nor after a failed Enqueue.
	dirList := make([]string, 0, len(dirs))
	for d := range dirs {
		dirList = append(dirList, d)
	}
	slices.Sort(dirList)
	for _, dir := range dirList {
		f, err := s.placeMarker(dir, id)
		if err != nil {
			return "", fmt.Errorf("spool: %w", err)
		}
		path := s.markerPath(dir, id)
		cleanup = append(cleanup, func() { os.Remove(path) })
		locked = append(locked, f)
	}

	if err := os.Rename(bodyPath, s.bodyPath(id)); err != nil {
		return "", fmt.Errorf("spool: %w", err)
	}
	cleanup = append(cleanup, func() { os.Remove(s.bodyPath(id)) })
	if err := syncDir(s.path(queueDir)); err != nil {
		return "", fmt.Errorf("spool: %w", err)
	}
	// The commit.
	if err := os.Rename(envTmp, s.envPath(id)); err != nil {
		return "", fmt.Errorf("spool: %w", err)
	}
	cleanup = append(cleanup, func() { os.Remove(s.envPath(id)) })
	if err := syncDir(s.path(queueDir)); err != nil {
		return "", fmt.Errorf("spool: %w", err)
	}
	s.idx.add(id, infoOf(ef), dirList)
	return id, nil
}

// placeMarker puts a locked marker for id in domain directory dir. The
// marker is locked before it gets its name, so no one sees it unlocked
// before the message is committed.
func (s *Spool) placeMarker(dir, id string) (*os.File, error) {
	if err := os.MkdirAll(s.path(domainsDir, dir), dirPerm); err != nil {
		return nil, err
	}
	f, err := createTemp(s.path(tmpDir), "mark")
	if err != nil {
		return nil, err
	}
	if _, err := tryLock(f); err != nil {
		f.Close()
		os.Remove(f.Name())
		return nil, err
	}
	err = os.Link(f.Name(), s.markerPath(dir, id))
	os.Remove(f.Name())
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// writeTemp writes data to a new fsynced file in dir and returns its name.
func writeTemp(dir, suffix string, data []byte) (string, error) {
	f, err := createTemp(dir, suffix)
	if err != nil {
		return "", err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return "", err
	}
	return f.Name(), nil
}

var errTooBig = errors.New("spool: message larger than the quota allows")

// crlfWriter writes a body with every bare LF turned into CRLF, counting
// the bytes written and noting 8-bit bytes.
type crlfWriter struct {
	w        *bufio.Writer
	limit    int64 // -1: none
	n        int64
	cr       bool // the last byte written was CR
	eightBit bool
}

func (c *crlfWriter) Write(p []byte) (int, error) {
	total := len(p)
	if !c.eightBit {
		for _, b := range p {
			if b >= 0x80 {
				c.eightBit = true
				break
			}
		}
	}
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			if err := c.write(p); err != nil {
				return 0, err
			}
			break
		}
		cr := c.cr
		if i > 0 {
			cr = p[i-1] == '\r'
		}
		if err := c.write(p[:i]); err != nil {
			return 0, err
		}
		if !cr {
			if err := c.write([]byte{'\r'}); err != nil {
				return 0, err
			}
		}
		if err := c.write([]byte{'\n'}); err != nil {
			return 0, err
		}
		p = p[i+1:]
	}
	return total, nil
}

func (c *crlfWriter) write(p []byte) error {
	if len(p) == 0 {
		return nil
	}
	c.n += int64(len(p))
	if c.limit >= 0 && c.n > c.limit {
		return errTooBig
	}
	c.cr = p[len(p)-1] == '\r'
	_, err := c.w.Write(p)
	return err
}

// ctxReader stops reading when ctx is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (r *ctxReader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(p)
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}
