package nospace

import (
	"errors"
	"fmt"
	"io/fs"
	"syscall"
	"testing"
)

func TestIs(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{syscall.ENOSPC, true},
		{&fs.PathError{Op: "write", Path: "f", Err: syscall.EDQUOT}, true},
		{fmt.Errorf("spilling: %w", syscall.ENOSPC), true},
		{syscall.EIO, false},
		{errors.New("no space left on device"), false},
		{nil, false},
	} {
		if got := Is(c.err); got != c.want {
			t.Errorf("Is(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}
