package spool

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/go-odmr/odmr"
)

// TestEnqueueWithCallersID: a caller may name the message with NewID
// before queuing it; a bad or used ID queues nothing.
func TestEnqueueWithCallersID(t *testing.T) {
	f := newFixture(t)
	id := NewID()
	got, err := f.s.Enqueue(context.Background(), odmr.Envelope{ID: id, From: "s@x.test", To: []string{"u@a.test"}}, strings.NewReader("x\r\n"))
	require.NoError(t, err)
	assert.Equal(t, id, got)
	_, err = f.s.Enqueue(context.Background(), odmr.Envelope{ID: id, From: "s@x.test", To: []string{"v@b.test"}}, strings.NewReader("y\r\n"))
	assert.ErrorContains(t, err, "in use")
	// Another queue's ID is not the spool's: the spool names the message.
	other, err := f.s.Enqueue(context.Background(), odmr.Envelope{ID: "../x", From: "s@x.test", To: []string{"w@c.test"}}, strings.NewReader("z\r\n"))
	require.NoError(t, err)
	assert.True(t, isID(other))
	ds := drain(t, f.s, "a.test", "b.test")
	require.Len(t, ds, 1)
	assert.Equal(t, "x\r\n", ds[0].body)
	names, err := os.ReadDir(filepath.Join(f.dir, "tmp"))
	require.NoError(t, err)
	assert.Empty(t, names, "debris in tmp/")
	assert.NoFileExists(t, f.s.markerPath(dirName("b.test"), id), "marker of the refused message")
}
