package main

import (
	"context"
	"flag"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/spool"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// tree describes everything under dir: names, types, sizes and
// modification times, to show that something changed nothing.
func tree(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		out = append(out, fmt.Sprint(rel, " ", fi.Mode(), " ", fi.Size(), " ", fi.ModTime()))
		return nil
	})
	require.NoError(t, err)
	return out
}

// TestListCreatesNothingInAnOrdinaryDirectory: -list -spool on a
// directory that holds no spool says so, naming the flag, and leaves the
// directory as it was (it used to create the spool layout in it).
func TestListCreatesNothingInAnOrdinaryDirectory(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, dir string)
	}{
		// The case: an empty directory.
		{"empty", func(t *testing.T, dir string) {}},
		// Something else's directory, with a file and a "queue" of its own.
		{"other", func(t *testing.T, dir string) {
			require.NoError(t, os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("mine\n"), 0o600))
			require.NoError(t, os.Mkdir(filepath.Join(dir, "queue"), 0o700))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			tc.setup(t, dir)
			before := tree(t, dir)
			var out strings.Builder
			err := listSpool(dir, &out, time.Now(), slog.New(slog.DiscardHandler))
			require.ErrorIs(t, err, spool.ErrNotSpool)
			assert.ErrorContains(t, err, "-list -spool "+dir+": ")
			assert.ErrorContains(t, err, "has no spool.json")
			assert.Empty(t, out.String())
			// Through the program's flags too.
			err = run([]string{"-list", "-spool", dir})
			assert.ErrorIs(t, err, spool.ErrNotSpool)
			assert.Equal(t, before, tree(t, dir), "-list changed the directory")
		})
	}

	file := filepath.Join(t.TempDir(), "file")
	require.NoError(t, os.WriteFile(file, nil, 0o600))
	err := listSpool(file, new(strings.Builder), time.Now(), nil)
	assert.ErrorIs(t, err, spool.ErrNotSpool)
	assert.ErrorContains(t, err, "is not a directory")
}

// TestListGolden lists a spool holding a bit of everything -list shows,
// with a fake clock so that ages and times are fixed, and checks that
// listing changed nothing in it.
func TestListGolden(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "spool")
		open := func() *spool.Spool {
			s, err := spool.Open(dir, spool.Options{MaintenanceInterval: -1, Hostname: "prov.test", Logger: slog.New(slog.DiscardHandler)})
			require.NoError(t, err)
			return s
		}
		time.Sleep(7 * 24 * time.Hour) // the bubble's clock starts in 2000
		now := time.Now()
		s := open()
		body := "Subject: x\r\n\r\nhi\r\n"
		enqueue := func(age time.Duration, body string, to ...string) string {
			t.Helper()
			id, err := s.Enqueue(context.Background(), odmr.Envelope{From: "s@x.test", To: to, Received: now.Add(-age)}, strings.NewReader(body))
			require.NoError(t, err)
			return id
		}
		enqueue(19*time.Second, body, "a@a.example")
		enqueue(3*time.Minute+59*time.Second, "Subject: big\r\n\r\n"+strings.Repeat("x", 1984)+"\r\n", "b@b.example")
		enqueue(2*time.Hour+59*time.Minute, body, "b2@b.example", "c@c.example")
		enqueue(4*24*time.Hour+23*time.Hour, body, "d@d.example")
		enqueue(6*24*time.Hour, body, "g@g.example") // expired: one bounce
		quarantined := enqueue(time.Minute, body, "e@e.example")
		damaged := enqueue(time.Minute, body, "f@f.example")
		n, err := s.Expire(context.Background())
		require.NoError(t, err)
		require.Equal(t, 1, n)
		require.NoError(t, s.Close())
		require.NoError(t, os.Truncate(filepath.Join(dir, "queue", quarantined+".eml"), 4))
		s = open()
		require.NoError(t, s.WaitIndexed(context.Background())) // quarantines it
		require.NoError(t, s.Close())
		require.NoError(t, os.Truncate(filepath.Join(dir, "queue", damaged+".eml"), 5))

		before := tree(t, dir)
		var out strings.Builder
		require.NoError(t, listSpool(dir, &out, now, slog.New(slog.DiscardHandler)))
		assert.Equal(t, before, tree(t, dir), "-list changed the spool")

		got := strings.NewReplacer(dir, "SPOOL", quarantined, "QUARANTINED-ID", damaged, "DAMAGED-ID").Replace(out.String())
		golden := filepath.Join("testdata", "list.golden")
		if *update {
			require.NoError(t, os.WriteFile(golden, []byte(got), 0o644))
		}
		want, err := os.ReadFile(golden)
		require.NoError(t, err)
		assert.Equal(t, string(want), got)
	})
}

func TestListWording(t *testing.T) {
	for _, tc := range []struct {
		d    time.Duration
		want string
	}{
		{-time.Second, "in the future"}, // a clock set back
		{0, "just now"},
		{999 * time.Millisecond, "just now"},
		{19 * time.Second, "19s ago"}, // the "0s ago"
		{59*time.Second + 999*time.Millisecond, "59s ago"},
		{time.Minute, "1m ago"},
		{3*time.Minute + 59*time.Second, "3m ago"}, // rounded down
		{2*time.Hour + 59*time.Minute, "2h ago"},
		{24 * time.Hour, "1d ago"},
		{4*24*time.Hour + 23*time.Hour, "4d ago"},
		{400 * 24 * time.Hour, "400d ago"},
	} {
		assert.Equal(t, tc.want, ago(tc.d), "%v", tc.d)
	}
	for _, tc := range []struct {
		n    int64
		want string
	}{
		{0, "0 B"},
		{1, "1 B"},
		{1023, "1023 B"},
		{1024, "1.0 KiB"},
		{1535, "1.4 KiB"}, // rounded down
		{1536, "1.5 KiB"},
		{1<<20 - 1, "1023.9 KiB"},
		{3 << 20, "3.0 MiB"},
		{5<<30 + 1<<29, "5.5 GiB"},
		{1<<63 - 1, "7.9 EiB"}, // the largest, without overflow
	} {
		assert.Equal(t, tc.want, humanBytes(tc.n), "%d", tc.n)
	}
	assert.Equal(t, "0 messages", count(0, "message"))
	assert.Equal(t, "1 message", count(1, "message"))
	assert.Equal(t, "2 messages", count(2, "message"))
	assert.Equal(t, "1 bounce", count(1, "bounce"))
	assert.Equal(t, "3 damaged messages", count(3, "damaged message"))
}
