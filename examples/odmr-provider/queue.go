package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/textproto"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/go-odmr/odmr/internal/termsafe"
	"github.com/go-odmr/odmr/queueadmin"
	"github.com/go-odmr/odmr/spool"
)

// The queue tools, in the manner of Postfix's postqueue -p and postsuper
// -d, -h and -H: each acts on the queue in -spool or -queue, through
// queueadmin.Admin, and exits without starting the provider. They are safe
// while providers run on the same spool or database.

// queueFlags are the queue tools' flags; at most one is given.
type queueFlags struct {
	list                       bool
	show                       string
	del, bounce, hold, release string
	ids                        []string // the flag's ID, then the arguments
	stdinIDs                   bool     // the flag's ID was "-"
	cmd                        string   // the flag given, for messages
	write                      bool     // cmd changes the queue
}

func (q *queueFlags) register(fs *flag.FlagSet) {
	fs.BoolVar(&q.list, "queue-list", false, "list the messages queued in -spool or -queue (ID, with * if being delivered, size, age, sender, recipients, attempts, last error), and exit; reads only")
	fs.StringVar(&q.show, "queue-show", "", "print the envelope and headers of message `ID` in -spool or -queue, and exit; reads only")
	fs.StringVar(&q.del, "queue-delete", "", "delete message `ID` from -spool or -queue, and any further IDs given as arguments, without a bounce; - reads IDs from standard input, ALL means every message")
	fs.StringVar(&q.bounce, "queue-bounce", "", "return message `ID` (and further IDs as arguments, -, ALL) to its sender now with a bounce (DSN), which the provider sends")
	fs.StringVar(&q.hold, "queue-hold", "", "hold message `ID` (and further IDs as arguments, -, ALL): it stays queued but is not delivered until -queue-release")
	fs.StringVar(&q.release, "queue-release", "", "release held message `ID` (and further IDs as arguments, -, ALL)")
}

// check says which tool was asked for, with its IDs; args are the
// command line's arguments after the flags, and queue the -spool or
// -queue given, if any.
func (q *queueFlags) check(args []string, queue string) error {
	var given []string
	if q.list {
		given, q.cmd = append(given, "-queue-list"), "-queue-list"
	}
	if q.show != "" {
		given, q.cmd = append(given, "-queue-show"), "-queue-show"
	}
	for _, w := range []struct{ name, id string }{
		{"-queue-delete", q.del}, {"-queue-bounce", q.bounce}, {"-queue-hold", q.hold}, {"-queue-release", q.release},
	} {
		if w.id != "" {
			given, q.cmd, q.write = append(given, w.name), w.name, true
			q.ids = append([]string{w.id}, args...)
		}
	}
	switch {
	case len(given) == 0:
		return nil
	case len(given) > 1:
		return fmt.Errorf("%s: one queue tool at a time", strings.Join(given, ", "))
	case queue == "":
		return fmt.Errorf("%s needs -spool DIR or -queue URL", q.cmd)
	case !q.write && len(args) > 0:
		return fmt.Errorf("%s: unexpected argument %q (see -h)", q.cmd, args[0])
	}
	if q.write && q.ids[0] == "-" {
		if len(q.ids) > 1 {
			return fmt.Errorf("%s -: IDs come from standard input, not arguments", q.cmd)
		}
		q.stdinIDs = true
	}
	return nil
}

// queueAdmin is what the tools need of a queue: any queue implementing
// queueadmin.Admin can be given them.
type queueAdmin interface {
	queueadmin.Admin
	Close() error
}

// runQueueTool runs the queue tool of cfg on the spool in cfg.spoolDir
// or the database in cfg.queueURL, printing to out and reading IDs from
// in for "-". The reading tools open the spool read-only; none creates a
// spool where there is none.
func runQueueTool(cfg *config, in io.Reader, out io.Writer, now time.Time, log *slog.Logger) error {
	q := &cfg.queue
	if cfg.queueURL != "" {
		a, err := openPGAdmin(cfg, log)
		if err != nil {
			return fmt.Errorf("%s: %w", q.cmd, err)
		}
		return runQueueToolOn(a, cfg, in, out, now)
	}
	var s *spool.Spool
	var err error
	if q.write {
		if err := checkSpoolOwner(cfg.spoolDir); err != nil {
			return fmt.Errorf("%s -spool %s: %w", q.cmd, cfg.spoolDir, err)
		}
		// The bounces are left in the spool's outbox, for the provider
		// to send with its own -smarthost or -bounces.
		s, err = spool.Open(cfg.spoolDir, spool.Options{NoCreate: true, MaintenanceInterval: -1, Hostname: cfg.hostname, MaxAge: cfg.maxAge, Logger: log})
	} else {
		s, err = spool.Open(cfg.spoolDir, spool.Options{ReadOnly: true, MaintenanceInterval: -1, Logger: log})
	}
	if err != nil {
		return fmt.Errorf("%s -spool %s: %w", q.cmd, cfg.spoolDir, err)
	}
	return runQueueToolOn(s, cfg, in, out, now)
}

// runQueueToolOn runs the queue tool of cfg on a, and closes a.
func runQueueToolOn(a queueAdmin, cfg *config, in io.Reader, out io.Writer, now time.Time) error {
	q := &cfg.queue
	defer a.Close()
	ctx := context.Background()
	var err error
	switch {
	case q.list:
		return listQueue(ctx, a, out, now)
	case q.show != "":
		return showMessage(ctx, a, q.show, out, now)
	}
	ids := q.ids
	if q.stdinIDs {
		if ids, err = readIDs(in); err != nil {
			return fmt.Errorf("%s -: %w", q.cmd, err)
		}
	}
	if len(ids) == 1 && ids[0] == "ALL" {
		msgs, err := a.Messages(ctx)
		if err != nil {
			return fmt.Errorf("%s: %w", q.cmd, err)
		}
		ids = ids[:0]
		for _, m := range msgs {
			ids = append(ids, m.Envelope.ID)
		}
	}
	op, done := map[string]func(context.Context, string) error{
		"-queue-delete": a.Delete, "-queue-bounce": a.Bounce, "-queue-hold": a.Hold, "-queue-release": a.Release,
	}[q.cmd], map[string]string{
		"-queue-delete": "deleted", "-queue-bounce": "bounced", "-queue-hold": "held", "-queue-release": "released",
	}[q.cmd]
	var errs []error
	n := 0
	for _, id := range ids {
		err := op(ctx, id)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			errs = append(errs, fmt.Errorf("%s %s: no such message in the queue", q.cmd, id))
		case err != nil:
			errs = append(errs, fmt.Errorf("%s %s: %w", q.cmd, id, err))
		default:
			n++
		}
	}
	fmt.Fprintf(out, "%s %s\n", count(n, "message"), done)
	switch {
	case q.cmd != "-queue-bounce" || n == 0:
	case cfg.queueURL != "":
		fmt.Fprintln(out, "the bounces wait in the database (odmr_reports); a provider node sends them within a minute")
	default:
		fmt.Fprintln(out, "the bounces wait in the spool's outbox; the provider sends them within a minute, or when it starts")
	}
	return errors.Join(errs...)
}

// readIDs reads one ID a line; blank lines are skipped.
func readIDs(in io.Reader) ([]string, error) {
	var ids []string
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		if id := strings.TrimSpace(sc.Text()); id != "" {
			ids = append(ids, id)
		}
	}
	return ids, sc.Err()
}

// listQueue prints one block a message, oldest first, as postqueue -p
// does: ID, with '*' after it while a session delivers the message, size,
// arrival and age, sender, "held" if it is; then each recipient still
// queued with its attempts and last error.
func listQueue(ctx context.Context, a queueadmin.Admin, out io.Writer, now time.Time) error {
	msgs, err := a.Messages(ctx)
	if err != nil {
		return fmt.Errorf("-queue-list: %w", err)
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSIZE\tARRIVED\tSENDER")
	var bytes int64
	held, delivering := 0, 0
	for _, m := range msgs {
		env := m.Envelope
		bytes += env.Size
		state := ""
		if m.Held {
			state = "\t(held)"
			held++
		}
		id := env.ID
		if m.Delivering {
			id += "*"
			delivering++
		}
		fmt.Fprintf(tw, "%s\t%s\t%s (%s)\t<%s>%s\n", id, humanBytes(env.Size),
			env.Received.UTC().Format(time.RFC3339), ago(now.Sub(env.Received)), termsafe.Field(env.From), state)
		for _, r := range m.Recipients {
			fmt.Fprintf(tw, "  <%s>\t%s\n", termsafe.Field(r.Addr), attemptText(r, now))
		}
	}
	tw.Flush()
	fmt.Fprintf(out, "%s, %s in all", count(len(msgs), "message"), humanBytes(bytes))
	if held > 0 {
		fmt.Fprintf(out, "; %d held", held)
	}
	if delivering > 0 {
		fmt.Fprintf(out, "; %d being delivered (*)", delivering)
	}
	fmt.Fprintln(out)
	return nil
}

// attemptText says how many deliveries to r failed and why the last did.
func attemptText(r queueadmin.Recipient, now time.Time) string {
	if r.Attempts == 0 && r.LastError == nil {
		return "not tried yet"
	}
	s := count(r.Attempts, "attempt")
	if !r.LastAttempt.IsZero() {
		s += ", last " + ago(now.Sub(r.LastAttempt))
	}
	if r.LastError != nil {
		s += ": " + oneLine(r.LastError.Error())
	}
	return s
}

// oneLine keeps an error's text on one line of a listing.
func oneLine(s string) string {
	s = termsafe.Text(strings.ReplaceAll(s, "\n", " "))
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return s
}

// maxShownHeader bounds the header section -queue-show prints.
const maxShownHeader = 64 << 10

// showMessage prints the envelope of message id and its header section.
func showMessage(ctx context.Context, a queueadmin.Admin, id string, out io.Writer, now time.Time) error {
	m, err := a.Message(ctx, id)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("-queue-show %s: no such message in the queue", id)
	} else if err != nil {
		return fmt.Errorf("-queue-show %s: %w", id, err)
	}
	env := m.Envelope
	fmt.Fprintf(out, "id: %s\n", env.ID)
	fmt.Fprintf(out, "received: %s\n", env.Received.UTC().Format(time.RFC3339))
	fmt.Fprintf(out, "size: %d\n", env.Size)
	fmt.Fprintf(out, "from: <%s>\n", termsafe.Field(env.From))
	if env.Body != "" {
		fmt.Fprintf(out, "body: %s\n", termsafe.Text(string(env.Body)))
	}
	if env.UTF8 {
		fmt.Fprintln(out, "smtputf8: yes")
	}
	if env.DSN != nil && (env.DSN.Return != "" || env.DSN.EnvID != "") {
		fmt.Fprintf(out, "dsn: ret=%s envid=%s\n", termsafe.Text(string(env.DSN.Return)), oneLine(env.DSN.EnvID))
	}
	if m.Held {
		fmt.Fprintln(out, "held: yes")
	}
	if m.Delivering {
		fmt.Fprintln(out, "delivering: yes")
	}
	for _, r := range m.Recipients {
		fmt.Fprintf(out, "to: <%s> %s\n", termsafe.Field(r.Addr), attemptText(r, now))
	}
	body, err := a.OpenMessage(ctx, id)
	if err != nil {
		return fmt.Errorf("-queue-show %s: %w", id, err)
	}
	defer body.Close()
	fmt.Fprintln(out)
	br := bufio.NewReader(io.LimitReader(body, maxShownHeader))
	tp := textproto.NewReader(br)
	for {
		line, err := tp.ReadLine()
		if line == "" || err != nil {
			break
		}
		fmt.Fprintln(out, termsafe.Text(line))
	}
	return nil
}
