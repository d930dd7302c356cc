package maildir_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"testing/iotest"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/maildir"
)

func newSink(t *testing.T) (*maildir.Sink, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "Maildir")
	s, err := maildir.New(dir)
	require.NoError(t, err)
	s.Hostname = "host.example/with:odd"
	return s, dir
}

// files returns the contents of the files in dir/sub by name.
func files(t *testing.T, dir, sub string) map[string]string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(dir, sub))
	require.NoError(t, err)
	out := make(map[string]string)
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, sub, e.Name()))
		require.NoError(t, err)
		out[e.Name()] = string(b)
	}
	return out
}

func only(t *testing.T, m map[string]string) (string, string) {
	t.Helper()
	require.Len(t, m, 1)
	for k, v := range m {
		return k, v
	}
	return "", ""
}

func TestMaildirNewCreatesTheMaildir(t *testing.T) {
	_, dir := newSink(t)
	for _, sub := range []string{"tmp", "new", "cur"} {
		fi, err := os.Stat(filepath.Join(dir, sub))
		require.NoError(t, err)
		assert.True(t, fi.IsDir())
		assert.Equal(t, os.FileMode(0o700), fi.Mode().Perm())
	}
}

func TestMaildirDeliverConvertsCRLFToLFByDefault(t *testing.T) {
	s, dir := newSink(t)
	// One byte at a time, so that every CRLF straddles two writes; a CR
	// not followed by LF is kept.
	body := "Subject: x\r\n\r\nline\r\nodd\rcr\r\n8-bit: \xc3\xa9\r\n"
	err := s.Deliver(context.Background(), odmr.Envelope{From: "a@b"}, iotest.OneByteReader(strings.NewReader(body)))
	require.NoError(t, err)
	name, got := only(t, files(t, dir, "new"))
	assert.Equal(t, "Return-Path: <a@b>\nSubject: x\n\nline\nodd\rcr\n8-bit: \xc3\xa9\n", got)
	assert.Empty(t, files(t, dir, "tmp"))

	// SECONDS.M<usec>P<pid>Q<n>R<random>.HOST, with / and : escaped.
	assert.Regexp(t, regexp.MustCompile(`^\d+\.M\d{6}P\d+Q\d+R[0-9a-f]{16}\.host\.example\\057with\\072odd$`), name)
	fi, err := os.Stat(filepath.Join(dir, "new", name))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
}

func TestMaildirDeliverKeepCRLFStoresTheBytesAsReceived(t *testing.T) {
	s, dir := newSink(t)
	s.KeepCRLF = true
	s.NoReturnPath = true
	body := "Subject: x\r\n\r\n..dots\r\n\x00\xff\r"
	require.NoError(t, s.Deliver(context.Background(), odmr.Envelope{}, strings.NewReader(body)))
	_, got := only(t, files(t, dir, "new"))
	assert.Equal(t, body, got)
}

// The zero Sink and New add the envelope headers a final delivery agent
// adds, as odmr-customer -maildir does: a Sink used from Go must not lose
// the envelope sender the program keeps.
func TestMaildirDeliverAddsEnvelopeHeaders(t *testing.T) {
	s, dir := newSink(t)
	env := odmr.Envelope{From: "sender@example.net", To: []string{"a@example.org", "b@example.org"}}
	require.NoError(t, s.Deliver(context.Background(), env, strings.NewReader("Subject: x\r\n\r\nx\r\n")))
	_, got := only(t, files(t, dir, "new"))
	assert.Equal(t, "Return-Path: <sender@example.net>\nDelivered-To: a@example.org\nDelivered-To: b@example.org\nSubject: x\n\nx\n", got)

	// A bounce has the null reverse path.
	s2, dir2 := newSink(t)
	require.NoError(t, s2.Deliver(context.Background(), odmr.Envelope{}, strings.NewReader("x\r\n")))
	_, got = only(t, files(t, dir2, "new"))
	assert.Equal(t, "Return-Path: <>\nx\n", got)

	// Both can be turned off.
	s3, dir3 := newSink(t)
	s3.NoReturnPath, s3.NoDeliveredTo = true, true
	require.NoError(t, s3.Deliver(context.Background(), env, strings.NewReader("x\r\n")))
	_, got = only(t, files(t, dir3, "new"))
	assert.Equal(t, "x\n", got)

	// An address that would break the header is refused.
	err := s.Deliver(context.Background(), odmr.Envelope{From: "a@b\r\nX-Injected: 1"}, strings.NewReader("x\r\n"))
	require.Error(t, err)
	assert.True(t, strings.HasPrefix(err.Error(), "odmr: maildir: "), err.Error())
}

func TestMaildirDeliverLeavesNothingWhenTheBodyBreaks(t *testing.T) {
	s, dir := newSink(t)
	broken := io.MultiReader(strings.NewReader("Subject: x\r\n\r\npart"), iotest.ErrReader(errors.New("line dropped")))
	err := s.Deliver(context.Background(), odmr.Envelope{}, broken)
	require.EqualError(t, err, "line dropped", "the reader's error comes back as it is")
	for _, sub := range []string{"tmp", "new", "cur"} {
		assert.Empty(t, files(t, dir, sub), sub)
	}
}

func TestMaildirDeliverHonoursCancellation(t *testing.T) {
	s, dir := newSink(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := s.Deliver(ctx, odmr.Envelope{}, strings.NewReader("x\r\n"))
	assert.ErrorIs(t, err, context.Canceled)
	assert.Empty(t, files(t, dir, "new"))
	assert.Empty(t, files(t, dir, "tmp"))
}

func TestMaildirConcurrentDeliveriesGetDistinctFiles(t *testing.T) {
	s, dir := newSink(t)
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			body := fmt.Sprintf("Subject: %d\r\n\r\n%d\r\n", i, i)
			assert.NoError(t, s.Deliver(context.Background(), odmr.Envelope{}, strings.NewReader(body)))
		}()
	}
	wg.Wait()
	got := files(t, dir, "new")
	assert.Len(t, got, 50)
	seen := make(map[string]bool)
	for _, b := range got {
		seen[b] = true
	}
	assert.Len(t, seen, 50)
}

func TestMaildirNewReportsAnUnusableDirectory(t *testing.T) {
	f := filepath.Join(t.TempDir(), "file")
	require.NoError(t, os.WriteFile(f, nil, 0o600))
	_, err := maildir.New(filepath.Join(f, "Maildir"))
	require.Error(t, err)
	assert.True(t, strings.HasPrefix(err.Error(), "odmr: maildir: "), err.Error())
}
