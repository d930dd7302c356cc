// Command odmr-bench measures this module's ODMR provider and customer
// and prints each figure next to a baseline measured in the same run,
// with the ratio:
//
//   - throughput: messages of 10 KiB relayed provider → customer → sink
//     over loopback, against go-smtp's client sending the same messages
//     to go-smtp's server;
//   - procs (not in the default -only): the same with each end in a
//     process of its own, as the two roles run on two hosts: the
//     provider or go-smtp's server in a child, the customer or go-smtp's
//     client in this process;
//   - one large message (1 GiB) through the whole path, each side in a
//     child process whose peak RSS (VmHWM) is reported, against go-smtp's
//     client and server, also each in a child;
//   - session rate: connect, EHLO, AUTH CRAM-MD5, ATRN answered 453, QUIT
//     from parallel customers, against go-smtp's connect, EHLO, AUTH
//     PLAIN, QUIT;
//   - memory per idle session with 10,000 sessions open, provider against
//     go-smtp's server, each in a child process;
//   - latency: the same messages through a TCP proxy that delays each
//     direction, plain against pipelined, in round trips per message,
//     with the per-recipient outcomes compared;
//   - peers (not run by default): 2,000 messages of 10 KiB from the
//     provider through the customers people run, fetchmail and this
//     module's relay and SMTP sink (what odmr-customer -relay and -smtp
//     run), into a local MTA, against go-smtp's client sending to the
//     same MTA, each with and without quick ACKs: Postfix's smtp-sink,
//     offering PIPELINING and hiding it, and with -peers-mta Exim and a
//     private Postfix smtpd, which offer CHUNKING, with the provider
//     sending BDAT and DATA.
//   - local (not in the default -only): the same messages fetched into a
//     local go-smtp server through smtpsink (odmr-customer -smtp)
//     against odmr.Relay (odmr-customer -relay), in msg/s and CPU.
//   - queue, only when asked: the spool with -queue-sizes messages queued,
//     each measured in a child process (Open, the index, memory per
//     message, HasMail, one ATRN session), against the empty spool.
//
// Usage:
//
//	go run ./examples/odmr-bench [-only throughput,big,sessions,idle,latency,peers,local,queue]
//
// See BENCHMARKS.md for the results and the exact commands.
package main

import (
	"flag"
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/go-odmr/odmr/internal/quickack"
)

var (
	only        = flag.String("only", "throughput,big,sessions,idle,latency", "comma-separated figures to measure")
	nMsgs       = flag.Int("n", 10000, "throughput: messages per run")
	msgSize     = flag.Int("size", 10<<10, "throughput and latency: message size in bytes")
	runs        = flag.Int("runs", 3, "throughput: runs of each side (the median is reported)")
	bigSize     = flag.Int64("big", 1<<30, "big: message size in bytes")
	nSessions   = flag.Int("sessions", 20000, "sessions: sessions per side")
	workers     = flag.Int("workers", 32, "sessions: parallel clients")
	nIdle       = flag.Int("idle", 10000, "idle: sessions held open")
	latencyN    = flag.Int("latency-n", 1000, "latency: messages per mode")
	delay       = flag.Duration("delay", 25*time.Millisecond, "latency: delay added in each direction")
	peersN      = flag.Int("peers-n", 2000, "peers: messages per run")
	peersBefore = flag.Bool("peers-before", true, "peers: also measure each customer without the provider's and relay's quick ACKs")
	peersOnly   = flag.String("peers-only", "", "peers: comma-separated customers to run, of relay, smtp and fetchmail (default: all)")
	noQuickAck  = flag.Bool("no-quickack", false, "turn the provider's quick ACKs (internal/quickack) off, to measure what they cost or are worth")
	customerBin = flag.String("odmr-customer", "", "peers: run this odmr-customer program for -relay and -smtp (default: the library, in this process)")
	smtpSinkBin = flag.String("smtp-sink", "/usr/sbin/smtp-sink", "peers: Postfix's smtp-sink, a local MTA")
	eximBin     = flag.String("exim", "/tmp/exim/inst/bin/exim", "peers: Exim (built by ../shared/peers/exim/build.sh), a local MTA; its daemon is started as root")
	peersMTA    = flag.String("peers-mta", "smtp-sink", "peers: comma-separated local MTAs to deliver into, of smtp-sink, exim and postfix (a private instance of its smtpd); exim and postfix offer CHUNKING")
	peersBody   = flag.String("peers-body", "bdat,data", "peers: how the provider sends bodies to an MTA that offers CHUNKING, of bdat and data")
	cpuProfile  = flag.String("cpuprofile", "", "throughput: write a CPU profile of the ODMR runs to this file")
	memProfile  = flag.String("memprofile", "", "throughput: write an allocation profile of the ODMR runs to this file")
	heapProfile = flag.String("heapprofile", "", "idle: write heap profiles of the servers, with the sessions open, to this file name plus a suffix")

	childProfile = flag.String("childprofile", "", "big and idle: children write CPU profiles to this file name plus their role and mode")

	childRole = flag.String("child", "", "internal: run as a child process in this role")
	childAddr = flag.String("addr", "", "internal: address for a child")
	childMode = flag.String("mode", "", "internal: mode for a child")
)

func main() {
	flag.Parse()
	raiseNoFile()
	quickack.Off.Store(*noQuickAck)
	if *childRole != "" {
		if *childProfile != "" {
			f, err := os.Create(*childProfile + "." + *childRole + *childMode)
			if err == nil {
				pprof.StartCPUProfile(f)
				defer pprof.StopCPUProfile()
			}
		}
		if err := runChild(*childRole); err != nil {
			fmt.Fprintf(os.Stderr, "odmr-bench child %s: %v\n", *childRole, err)
			pprof.StopCPUProfile()
			os.Exit(1)
		}
		return
	}
	fmt.Printf("odmr-bench: %s, %d CPUs (GOMAXPROCS %d), %s/%s\n\n", runtime.Version(), runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.GOOS, runtime.GOARCH)
	figures := map[string]func() ([]row, error){
		"throughput": throughput,
		"procs":      throughputProcs,
		"big":        bigMessage,
		"sessions":   sessionRate,
		"idle":       idleMemory,
		"latency":    latency,
		"peers":      peers,
		"local":      localDelivery,
		"queue":      queueScaling,
	}
	failed := false
	for _, name := range strings.Split(*only, ",") {
		f := figures[strings.TrimSpace(name)]
		if f == nil {
			fmt.Fprintf(os.Stderr, "odmr-bench: unknown figure %q\n", name)
			os.Exit(2)
		}
		start := time.Now()
		rows, err := f()
		printRows(name, rows, time.Since(start))
		if err != nil {
			fmt.Fprintf(os.Stderr, "odmr-bench: %s: %v\n", name, err)
			failed = true
		}
	}
	if failed {
		os.Exit(1)
	}
}

// row is one line of output: a figure for ODMR, its baseline and their
// ratio (ODMR / baseline), and a note.
type row struct {
	figure   string
	odmr     string
	baseline string
	ratio    float64
	note     string
}

func printRows(name string, rows []row, took time.Duration) {
	fmt.Printf("== %s (%v)\n", name, took.Round(time.Millisecond))
	w := tabwriter.NewWriter(os.Stdout, 2, 8, 2, ' ', 0)
	fmt.Fprintln(w, "figure\tODMR\tbaseline\tODMR/baseline\tnote")
	for _, r := range rows {
		ratio := ""
		if r.ratio != 0 {
			ratio = fmt.Sprintf("%.2f", r.ratio)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", r.figure, r.odmr, r.baseline, ratio, r.note)
	}
	w.Flush()
	fmt.Println()
}

func runChild(role string) error {
	switch role {
	case "big-provider":
		return bigProviderChild()
	case "big-customer":
		return bigCustomerChild()
	case "big-gosmtp-server":
		return bigGoSMTPServerChild()
	case "big-gosmtp-client":
		return bigGoSMTPClientChild()
	case "idle-provider", "idle-gosmtp":
		return idleServerChild(role)
	case "queue-spool":
		return queueSpoolChild()
	case "procs-provider", "procs-gosmtp-server":
		return procsServerChild(role)
	}
	return fmt.Errorf("unknown role %q", role)
}

// profile runs f under the CPU and allocation profilers when asked.
func profile(f func() error) error {
	if *cpuProfile != "" {
		out, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		defer out.Close()
		pprof.StartCPUProfile(out)
		defer pprof.StopCPUProfile()
	}
	err := f()
	if *memProfile != "" {
		out, err := os.Create(*memProfile)
		if err != nil {
			return err
		}
		defer out.Close()
		pprof.Lookup("allocs").WriteTo(out, 0)
	}
	return err
}
