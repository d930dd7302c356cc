package main

import (
	"flag"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestMain lets the test binary play the child processes the figures
// start: they run it with -child.
func TestMain(m *testing.M) {
	flag.Parse()
	if *childRole != "" {
		raiseNoFile()
		if err := runChild(*childRole); err != nil {
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestFiguresOnASmallScale runs every figure with small sizes, so that
// the program is known to work; it says nothing about speed.
func TestFiguresOnASmallScale(t *testing.T) {
	if testing.Short() {
		t.Skip("starts child processes and opens hundreds of connections")
	}
	*nMsgs, *runs = 20, 1
	*bigSize = 256<<10 + 17
	*nSessions, *workers = 20, 4
	*nIdle = 50
	*latencyN, *delay = 8, time.Millisecond
	*peersN = 10
	if os.Geteuid() == 0 {
		// The local MTAs that offer CHUNKING too, with BDAT and DATA,
		// where they are installed; they are started as root.
		if _, err := os.Stat(*eximBin); err == nil {
			*peersMTA += ",exim"
		}
		if _, err := exec.LookPath("postfix"); err == nil {
			*peersMTA += ",postfix"
		}
	}
	*queueSizes, *queuePerDom = "0,40", 4
	for name, f := range map[string]func() ([]row, error){
		"throughput": throughput, "procs": throughputProcs, "big": bigMessage, "sessions": sessionRate, "idle": idleMemory, "latency": latency,
		"peers": peers,
		"local": localDelivery,
		"queue": queueScaling,
	} {
		t.Run(name, func(t *testing.T) {
			if raceEnabled && (name == "big" || name == "idle" || name == "queue" || name == "procs") {
				// Child processes built with the race detector take a
				// second each to start; the figure's code runs without.
				t.Skip("starts child processes")
			}
			if _, err := exec.LookPath(*smtpSinkBin); name == "peers" && err != nil {
				t.Skip("Postfix's smtp-sink is not installed")
			}
			rows, err := f()
			if err != nil {
				t.Fatal(err)
			}
			if len(rows) == 0 {
				t.Fatal("no figures")
			}
			for _, r := range rows {
				if strings.Contains(r.note, "DIFFER") {
					t.Errorf("%s: %s", r.figure, r.note)
				}
			}
		})
	}
}
