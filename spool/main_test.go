package spool

import (
	"fmt"
	"os"
	"testing"
)

// Environment of a child process started by the crash tests: the test
// binary runs itself in one of the modes of crash_test.go.
const (
	childModeEnv = "ODMR_SPOOL_CHILD"
	childDirEnv  = "ODMR_SPOOL_DIR"
	childSeedEnv = "ODMR_SPOOL_SEED"
)

func TestMain(m *testing.M) {
	if mode := os.Getenv(childModeEnv); mode != "" {
		if err := runChild(mode, os.Getenv(childDirEnv), os.Getenv(childSeedEnv)); err != nil {
			fmt.Fprintln(os.Stderr, "child:", err)
			os.Exit(2)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}
