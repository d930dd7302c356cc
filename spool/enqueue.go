package spool

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"
	"time"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/internal/ascii"
	"github.com/go-odmr/odmr/internal/crlf"
	"github.com/go-odmr/odmr/internal/ctxio"
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
// ASCII, and Received when it is zero. Duplicate recipients are queued
// once.
//
// The message is named env.ID when it comes from [NewID], so that a
// caller can write the ID into the message (a Received field) before
// queuing it; an ID in use gives an error and queues nothing. Any other
// env.ID ("", or another queue's ID) is ignored and the spool names the
// message.
//
// When a domain of the recipients is over its quota, Enqueue returns an
// *odmr.Error with code 452 and enhanced code 4.2.2 and queues nothing. An
// invalid address gives a 501 *odmr.Error.
func (s *Spool) Enqueue(ctx context.Context, env odmr.Envelope, body io.Reader) (id string, err error) {
	if err := s.checkWritable(); err != nil {
		return "", err
	}
	rcpts, dirs, err := checkEnvelope(env)
	if err != nil {
		return "", err
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
	id = env.ID
	if !isID(id) {
		id = newID(now)
	} else if _, err := os.Lstat(s.envPath(id)); !isNotExist(err) {
		return "", fmt.Errorf("spool: message ID %s is in use", id)
	}
	tx := &enqueueTx{}
	defer func() { tx.end(err != nil) }()

	bodyPath, size, eightBit, err := s.writeBody(ctx, tx, res, body)
	if err != nil {
		return "", err
	}
	ef := newEnvelopeFile(id, env, rcpts, size, eightBit)
	data, err := json.MarshalIndent(ef, "", "\t")
	if err != nil {
		return "", err
	}
	envTmp, err := writeTemp(s.path(tmpDir), "json", append(data, '\n'))
	if err != nil {
		return "", fmt.Errorf("spool: %w", err)
	}
	tx.remove(envTmp)
	dirList, err := s.placeMarkers(tx, id, dirs)
	if err != nil {
		return "", err
	}

	// A link, not a rename, so that a caller's ID in use by another
	// Enqueue cannot replace its body.
	if err := os.Link(bodyPath, s.bodyPath(id)); errors.Is(err, fs.ErrExist) {
		return "", fmt.Errorf("spool: message ID %s is in use", id)
	} else if err != nil {
		return "", fmt.Errorf("spool: %w", err)
	}
	tx.remove(s.bodyPath(id))
	os.Remove(bodyPath)
	if err := syncDir(s.path(queueDir)); err != nil {
		return "", fmt.Errorf("spool: %w", err)
	}
	// The commit.
	if err := os.Rename(envTmp, s.envPath(id)); err != nil {
		return "", fmt.Errorf("spool: %w", err)
	}
	tx.remove(s.envPath(id))
	if err := syncDir(s.path(queueDir)); err != nil {
		return "", fmt.Errorf("spool: %w", err)
	}
	s.idx.add(id, infoOf(ef), dirList)
	return id, nil
}

// checkEnvelope checks the addresses of env and returns its recipients
// without duplicates, and the domain directories they are queued in,
// each with its domain.
func checkEnvelope(env odmr.Envelope) (rcpts []string, dirs map[string]string, err error) {
	if len(env.To) == 0 {
		return nil, nil, errors.New("spool: message has no recipients")
	}
	if badAddr(env.From) {
		return nil, nil, &odmr.Error{Code: 501, EnhancedCode: odmr.EnhancedCode{5, 1, 7}, Message: "Bad sender address syntax"}
	}
	dirs = make(map[string]string)
	for _, r := range env.To {
		if r == "" || badAddr(r) {
			return nil, nil, &odmr.Error{Code: 501, EnhancedCode: odmr.EnhancedCode{5, 1, 3}, Message: "Bad recipient address syntax"}
		}
		if !slices.Contains(rcpts, r) {
			rcpts = append(rcpts, r)
			d := odmr.RecipientDomain(r)
			dirs[dirName(d)] = d
		}
	}
	return rcpts, dirs, nil
}

// enqueueTx is an Enqueue under way: the files to remove, in reverse
// order, if it fails, and the files to unlock when it ends. Until the
// locks go, no one else acts on any of these files.
type enqueueTx struct {
	undo   []string
	locked []*os.File
}

// remove has path removed if the Enqueue fails.
func (tx *enqueueTx) remove(path string) { tx.undo = append(tx.undo, path) }

// end undoes the Enqueue if it failed, then unlocks.
func (tx *enqueueTx) end(failed bool) {
	if failed {
		for i := len(tx.undo) - 1; i >= 0; i-- {
			os.Remove(tx.undo[i])
		}
	}
	for _, f := range tx.locked {
		f.Close()
	}
}

// writeBody streams body to a temporary file, with CRLF line endings,
// within the quota left in res, and syncs it. The file stays locked until
// the envelope is committed, so that no one takes it for the debris of a
// crash. It returns the file's path, its size and whether it has 8-bit
// bytes.
func (s *Spool) writeBody(ctx context.Context, tx *enqueueTx, res *reservation, body io.Reader) (path string, size int64, eightBit bool, err error) {
	bodyFile, err := createTemp(s.path(tmpDir), "eml")
	if err != nil {
		return "", 0, false, fmt.Errorf("spool: %w", err)
	}
	path = bodyFile.Name()
	tx.remove(path)
	tx.locked = append(tx.locked, bodyFile)
	if _, err := tryLock(bodyFile); err != nil {
		return "", 0, false, err
	}
	left, limited := s.bytesLeft(res)
	bw := bufio.NewWriterSize(bodyFile, 32<<10)
	w := &crlf.Writer{W: bw, Limit: left}
	if _, err := io.Copy(w, ctxio.Reader(ctx, body)); err != nil {
		if errors.Is(err, crlf.ErrTooBig) {
			return "", 0, false, errQuota(limited)
		}
		return "", 0, false, fmt.Errorf("spool: reading message: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return "", 0, false, fmt.Errorf("spool: %w", err)
	}
	if err := bodyFile.Sync(); err != nil {
		return "", 0, false, fmt.Errorf("spool: %w", err)
	}
	if err := s.reserveBytes(res, w.N); err != nil {
		return "", 0, false, err
	}
	return path, w.N, w.EightBit, nil
}

// newEnvelopeFile returns the envelope file of message id, sent by env
// to rcpts, with a body of size bytes.
func newEnvelopeFile(id string, env odmr.Envelope, rcpts []string, size int64, eightBit bool) *envelopeFile {
	// The content decides, not the declaration: intakes (common SMTP
	// clients among them) declare BODY=8BITMIME for 7-bit mail too, and a 7-bit
	// message may go to a customer without 8BITMIME.
	if env.Body != odmr.BodyBinaryMIME {
		env.Body = ""
		if eightBit {
			env.Body = odmr.Body8BitMIME
		}
	}
	if !env.UTF8 {
		env.UTF8 = !ascii.Is(env.From)
		for _, r := range rcpts {
			env.UTF8 = env.UTF8 || !ascii.Is(r)
		}
	}
	ef := &envelopeFile{
		Version: envelopeVersion, ID: id, From: env.From, Received: env.Received,
		Size: size, Body: env.Body, UTF8: env.UTF8,
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
	return ef
}

// placeMarkers puts a locked marker for id in each of dirs, in order, and
// returns the directories sorted. The markers stay locked until the
// commit: no one can lease the message before it exists, nor after a
// failed Enqueue.
func (s *Spool) placeMarkers(tx *enqueueTx, id string, dirs map[string]string) ([]string, error) {
	dirList := make([]string, 0, len(dirs))
	for d := range dirs {
		dirList = append(dirList, d)
	}
	slices.Sort(dirList)
	for _, dir := range dirList {
		f, err := s.placeMarker(dir, id)
		if err != nil {
			return nil, fmt.Errorf("spool: %w", err)
		}
		tx.remove(s.markerPath(dir, id))
		tx.locked = append(tx.locked, f)
	}
	return dirList, nil
}

// NewID returns a new message ID, for a caller that must know the ID of a
// message before [Spool.Enqueue] queues it under that ID (env.ID). IDs sort
// in the order they were made and are unique across processes.
func NewID() string { return newID(time.Now()) }

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
