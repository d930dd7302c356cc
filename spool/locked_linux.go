package spool

import (
	"bufio"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// procLocks is the kernel's table of file locks; a variable for the
// tests.
var procLocks = "/proc/locks"

// lockedFiles lists the files someone holds a flock(2) lock on, as
// /proc/locks shows them, without taking any lock itself: a listing must
// not make a session pass over the message it looks at. The kernel shows
// only the locks of processes in the reader's PID namespace. It returns
// false if the table cannot be read.
func lockedFiles() (map[fileKey]bool, bool) {
	f, err := os.Open(procLocks)
	if err != nil {
		return nil, false
	}
	defer f.Close()
	// "1: FLOCK  ADVISORY  WRITE 4164 fe:00:5326336 0 EOF", the device's
	// major and minor numbers in hex; a waiter's line has "->" after the
	// number and is no lock held.
	locked := make(map[fileKey]bool)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 6 || fields[1] != "FLOCK" {
			continue
		}
		parts := strings.Split(fields[5], ":")
		if len(parts) != 3 {
			continue
		}
		major, err1 := strconv.ParseUint(parts[0], 16, 32)
		minor, err2 := strconv.ParseUint(parts[1], 16, 32)
		ino, err3 := strconv.ParseUint(parts[2], 10, 64)
		if err1 == nil && err2 == nil && err3 == nil {
			locked[fileKey{uint32(major), uint32(minor), ino}] = true
		}
	}
	if sc.Err() != nil {
		return nil, false
	}
	return locked, true
}

// keyOfFile returns the device and inode of the file at path, as
// /proc/locks names them.
func keyOfFile(path string) (fileKey, bool) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return fileKey{}, false
	}
	dev := uint64(st.Dev)
	major := (dev>>8)&0xfff | (dev>>32)&^0xfff
	minor := dev&0xff | (dev>>12)&^0xff
	return fileKey{uint32(major), uint32(minor), uint64(st.Ino)}, true
}
