//go:build unix

package main

import (
	"fmt"
	"os"
	"os/user"
	"strconv"
	"syscall"
)

// checkSpoolOwner refuses to change a spool that belongs to another user
// than the one running the tool: the files a tool writes (a held
// message's envelope, the markers that release it, a bounce) would belong
// to root, say, mode 0600, and the provider, running as the spool's
// owner, could then neither deliver the message nor send the bounce.
func checkSpoolOwner(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return nil // spool.Open reports it
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || int(st.Uid) == os.Geteuid() {
		return nil
	}
	owner := strconv.FormatUint(uint64(st.Uid), 10)
	if u, err := user.LookupId(owner); err == nil {
		owner = u.Username
	}
	return fmt.Errorf("the spool belongs to user %s: run the tool as that user (sudo -u %s ...), so that the provider can still use the files it writes", owner, owner)
}
