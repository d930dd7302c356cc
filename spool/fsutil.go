package spool

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// File and directory permissions: mail is private.
const (
	dirPerm  = 0o700
	filePerm = 0o600
)

// idLen is the length of a message ID: 16 hex digits of the Unix time in
// nanoseconds at which it was made, then 12 random hex digits. IDs sort in
// the order they were made, and name files across processes without any
// coordination.
const idLen = 28

// newID returns a fresh ID.
func newID(now time.Time) string {
	var r [6]byte
	rand.Read(r[:])
	return fmt.Sprintf("%016x%s", uint64(now.UnixNano()), hex.EncodeToString(r[:]))
}

// isID reports whether s has the form of an ID; anything else in the
// spool's directories is not the spool's and is left alone.
func isID(s string) bool {
	if len(s) != idLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// idTime returns when the ID was made.
func idTime(id string) time.Time {
	n, err := strconv.ParseUint(id[:16], 16, 64)
	if err != nil {
		return time.Time{}
	}
	return time.Unix(0, int64(n))
}

// syncDir fsyncs a directory, making the creations, renames and removals
// done in it durable.
func syncDir(dir string) error {
	d, err := openDir(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// writeAtomic replaces path with data: it writes a temporary file in
// tmpDir (on the same file system), fsyncs it, renames it over path and
// fsyncs path's directory. A crash leaves either the old file or the new
// one, never a mix.
func writeAtomic(tmpDir, path string, data []byte) error {
	tmp, err := createTemp(tmpDir, filepath.Base(path))
	if err != nil {
		return err
	}
	name := tmp.Name()
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(name, path)
	}
	if err != nil {
		os.Remove(name)
		return err
	}
	return syncDir(filepath.Dir(path))
}

// createTemp creates a new file in dir whose name starts with a fresh ID,
// so the age of debris left by a crash can be read off its name.
func createTemp(dir, suffix string) (*os.File, error) {
	if writeFault != nil {
		if err := writeFault(dir); err != nil {
			return nil, err
		}
	}
	for {
		name := filepath.Join(dir, newID(time.Now())+"."+suffix)
		f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_EXCL, filePerm)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		return f, err
	}
}

// removeIfExists removes path, ignoring a missing file.
func removeIfExists(path string) error {
	err := os.Remove(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

// writeFault, when a test sets it, is called before every file the spool
// creates (each goes through createTemp), and an error it returns is the
// creation's: it stands for a full disk.
var writeFault func(dir string) error

// errNotRegular is the error of opening something other than a regular
// file where the spool keeps files: a FIFO, a device, a directory or a
// symbolic link put there by someone else.
var errNotRegular = errors.New("not a regular file")

// openRegular opens path for reading if it is a regular file. It never
// waits: a FIFO named like a spool file is refused, not read.
func openRegular(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|oNonblock|oNofollow, 0)
	if err != nil {
		if isSymlink(path) {
			return nil, &os.PathError{Op: "open", Path: path, Err: errNotRegular}
		}
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, &os.PathError{Op: "open", Path: path, Err: errNotRegular}
	}
	return f, nil
}

// isSymlink reports whether path is a symbolic link.
func isSymlink(path string) bool {
	fi, err := os.Lstat(path)
	return err == nil && fi.Mode()&fs.ModeSymlink != 0
}

// readFileRegular reads at most max bytes of the regular file at path.
func readFileRegular(path string, max int64) ([]byte, error) {
	f, err := openRegular(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, max))
}

// openDir opens a directory; anything else at dir is refused without
// waiting.
func openDir(dir string) (*os.File, error) {
	return os.OpenFile(dir, os.O_RDONLY|oNonblock|oDirectory, 0)
}

// readNames returns the names in dir, or none when dir does not exist.
func readNames(dir string) ([]string, error) {
	d, err := openDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	defer d.Close()
	return d.Readdirnames(-1)
}

// readIDs returns the names in dir that have the form of an ID and are
// regular files (as the directory entry says, without a stat on most file
// systems), and the others that have the form of an ID: something put there
// that the spool must neither open nor count.
func readIDs(dir string) (ids, odd []string, err error) {
	d, err := openDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, nil
	} else if err != nil {
		return nil, nil, err
	}
	defer d.Close()
	entries, err := d.ReadDir(-1)
	for _, e := range entries {
		if !isID(e.Name()) {
			continue
		}
		if e.Type().IsRegular() {
			ids = append(ids, e.Name())
		} else {
			odd = append(odd, e.Name())
		}
	}
	return ids, odd, err
}

// dirName turns a domain into the name of its directory under domains/.
// Lower-case letters, digits, hyphens, underscores and inner dots are kept,
// so the usual domain reads as itself; any other byte becomes %XX, and the
// empty domain (a recipient without @) becomes "%". A name that would be
// too long for the file system is replaced by a hash.
func dirName(domain string) string {
	if domain == "" {
		return "%"
	}
	var b strings.Builder
	for i := 0; i < len(domain); i++ {
		c := domain[i]
		if c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.' && i > 0 {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	if b.Len() > 200 {
		return "%H" + hashHex(domain)
	}
	return b.String()
}

// domainOfDir inverts dirName. It returns false for a hashed name, whose
// domain only the envelopes can tell.
func domainOfDir(name string) (string, bool) {
	if name == "%" {
		return "", true
	}
	if strings.HasPrefix(name, "%H") {
		return "", false
	}
	var b strings.Builder
	for i := 0; i < len(name); i++ {
		if name[i] == '%' {
			if i+2 >= len(name) {
				return "", false
			}
			v, err := strconv.ParseUint(name[i+1:i+3], 16, 8)
			if err != nil {
				return "", false
			}
			b.WriteByte(byte(v))
			i += 2
			continue
		}
		b.WriteByte(name[i])
	}
	return b.String(), true
}

func hashHex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:16])
}
