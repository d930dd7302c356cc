//go:build unix

package pgtest

import (
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
)

// runAs holds the credentials the server runs with: the postgres user
// when we are root (PostgreSQL refuses to run as root), nil otherwise.
var runAs *syscall.Credential

// prepareOwner decides who runs the server and gives dir to that user. It
// returns the database superuser's name, which initdb -U makes postgres.
func prepareOwner(dir string) (string, error) {
	if os.Geteuid() != 0 {
		return "postgres", nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return "", fmt.Errorf("running as root and there is no postgres user to run the server as: %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	runAs = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	if err := filepath.Walk(dir, func(path string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(path, uid, gid)
	}); err != nil {
		return "", err
	}
	return "postgres", nil
}

// command returns a command that runs as runAs, and that is killed if the
// test binary dies without stopping it.
func command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: runAs}
	setDeathSignal(cmd.SysProcAttr)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	return cmd
}

// processAlive reports whether a process numbered pid exists.
func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || err == syscall.EPERM
}
