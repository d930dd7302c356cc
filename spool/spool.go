package spool

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/go-odmr/odmr"
)

// Defaults for the zero values of [Options].
const (
	DefaultLeaseTTL            = 15 * time.Minute
	DefaultMaxAge              = 5 * 24 * time.Hour
	DefaultMaintenanceInterval = time.Minute
	DefaultRefreshDomains      = 1000
)

// Options configures a [Spool]. The zero value is ready to use: no quota,
// DSNs kept in the spool until a Bouncer is set, expiry after five days.
type Options struct {
	// LeaseTTL is how long a session may go without touching a message it
	// leased (reading its body, completing it) before the lease is taken
	// back and the recipients can be given to another session. It guards
	// against a session that hangs or leaks its batch; a process that dies
	// loses its leases at once. Keep it above the longest the provider waits
	// for one reply (odmr.Provider's DataTimeout). 0 means DefaultLeaseTTL,
	// 15 minutes.
	LeaseTTL time.Duration

	// MaxAge is how long a message may stay queued. A recipient still
	// queued after that fails with status 4.4.7 and a delivery status
	// notification goes to the sender. 0 means DefaultMaxAge, 5 days.
	MaxAge time.Duration

	// Bouncer sends the delivery status notifications (DSNs) the spool
	// writes when recipients fail. DSNs wait in the spool's dsn/ directory
	// until the Bouncer accepts them and are retried after failures; nil
	// keeps them there until the spool is opened with a Bouncer (Open
	// warns of them when MaintenanceInterval is not negative, so that a
	// tool opening the spool beside a provider is silent).
	Bouncer Bouncer

	// Hostname names this host in DSNs (Reporting-MTA, From, Message-ID).
	// "" means the name os.Hostname returns, or "localhost".
	Hostname string

	// Quota limits what may be queued per domain. nil means no limit.
	Quota QuotaFunc

	// MaintenanceInterval is how often a background goroutine expires old
	// messages (Expire), retries DSNs (FlushBounces) and refreshes the index
	// from what other processes did (see RefreshDomains). A new DSN is also
	// handed to the Bouncer as soon as it is written. 0 means
	// DefaultMaintenanceInterval, 1 minute; a negative value disables the
	// periodic work, and the program calls Expire and FlushBounces itself.
	// The index Open builds is built in the background whatever the
	// value (see [Spool.WaitIndexed]).
	MaintenanceInterval time.Duration

	// RefreshDomains is how many domain directories each periodic
	// maintenance compares with the in-memory index, to count in quotas
	// and QueueStats what other processes sharing the spool queued and
	// delivered; it goes on from where the last one stopped, so every
	// directory is compared once every (domains / RefreshDomains)
	// intervals, and each maintenance costs the same whatever the size of
	// the queue. This process's own changes are counted at once, and List
	// compares every directory. 0 means DefaultRefreshDomains, 1000.
	RefreshDomains int

	// Logger receives the spool's log: unreadable files skipped, leases
	// taken back, DSNs that could not be sent. nil means slog.Default().
	Logger *slog.Logger

	// NoCreate makes Open fail with an error matching ErrNotSpool when
	// dir holds no spool, rather than make one there: for a program
	// acting on a spool that must exist. false means create.
	NoCreate bool

	// ReadOnly opens the spool to read it and nothing else, as an
	// operator's list command does on a live spool: Open creates, repairs
	// and removes nothing, takes no lock and starts no background work,
	// and what would change the spool (Enqueue, Claim, Expire,
	// FlushBounces, Delete, Bounce, Hold, Release) returns an error. It
	// implies NoCreate. false means a spool that is used.
	ReadOnly bool
}

// QuotaFunc returns the limits on what may be queued for domain: at most
// maxBytes bytes of messages and at most maxMessages messages. 0 means no
// limit. A message with recipients in several domains counts fully in
// each.
type QuotaFunc func(domain string) (maxBytes int64, maxMessages int)

// Spool is a durable mail queue in a directory: an [odmr.QueueSource] whose
// messages survive crashes and restarts, and that several processes can
// share. Create one with [Open]; it is safe for concurrent use.
type Spool struct {
	dir  string
	opts Options
	log  *slog.Logger

	idx       index
	refreshMu sync.Mutex // one reconciliation at a time
	sweep     *os.File   // domains/, as far as reconcileSome listed it

	mu     sync.Mutex
	leases map[groupKey]*message // groups leased by this Spool's batches
	closed bool
	bad    map[string]bool // unreadable envelopes already logged

	flushMu sync.Mutex // one outbox flush at a time
	kick    chan struct{}
	ctx     context.Context // canceled by Close
	cancel  context.CancelFunc
	wg      sync.WaitGroup

	// readOnly is set by Inspect: the spool is read and nothing on disk
	// is created, repaired, moved or removed. damaged collects the
	// messages Open would quarantine.
	readOnly bool
	held     int // messages held, as scanQueue found them
	damaged  []QuarantinedMessage
}

// groupKey names the recipients of one message in one domain directory:
// the unit of a lease.
type groupKey struct{ id, dir string }

// The spool's directories.
const (
	queueDir   = "queue"   // <id>.eml and <id>.json
	domainsDir = "domains" // <domain>/<id> markers
	tmpDir     = "tmp"     // files being written
	dsnDir     = "dsn"     // DSNs waiting for the Bouncer
	deadDir    = "dead"    // DSNs that could not be delivered
	layoutFile = "spool.json"
)

// layoutVersion is the version of the directory layout.
const layoutVersion = 1

// tmpGrace is the age after which an unlocked temporary file is debris.
// Files that stay in tmp/ for long (message bodies being received) are
// locked while they are written.
var tmpGrace = time.Hour

// Open opens the spool in dir, creating it if needed, and removes the
// temporary files of interrupted writes. Then, in the background, it reads
// every envelope to build the index, restores the domain markers a crash
// may have lost, quarantines damaged messages and removes bodies whose
// envelope was never committed; see [Spool.WaitIndexed]. Open returns
// without waiting, so its time does not grow with the queue: the Spool
// serves HasMail and Claim at once. Unreadable envelopes are logged and
// left alone. A spool opened ReadOnly is read whole before Open returns.
//
// Several processes, and several Spools in one process, may open the same
// directory at once; it must be on a local file system (see the package
// documentation). Close the Spool to stop its background work.
func Open(dir string, opts Options) (*Spool, error) {
	if !lockingSupported {
		return nil, errors.New("spool: file locking is not supported on this platform")
	}
	if opts.LeaseTTL <= 0 {
		opts.LeaseTTL = DefaultLeaseTTL
	}
	if opts.MaxAge <= 0 {
		opts.MaxAge = DefaultMaxAge
	}
	if opts.MaintenanceInterval == 0 {
		opts.MaintenanceInterval = DefaultMaintenanceInterval
	}
	if opts.RefreshDomains <= 0 {
		opts.RefreshDomains = DefaultRefreshDomains
	}
	if opts.Hostname == "" {
		opts.Hostname, _ = os.Hostname()
		if opts.Hostname == "" {
			opts.Hostname = "localhost"
		}
	}
	s := &Spool{
		dir:    dir,
		opts:   opts,
		log:    opts.Logger,
		leases: make(map[groupKey]*message),
		bad:    make(map[string]bool),
		kick:   make(chan struct{}, 1),
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	s.idx.init()
	s.ctx, s.cancel = context.WithCancel(context.Background())
	if opts.NoCreate || opts.ReadOnly {
		if err := isSpool(dir); err != nil {
			return nil, err
		}
	}
	if opts.ReadOnly {
		s.readOnly = true
		if err := s.checkLayout(); err != nil {
			return nil, err
		}
		if err := s.buildNow(); err != nil {
			return nil, err
		}
		return s, nil
	}
	for _, d := range []string{queueDir, domainsDir, tmpDir, dsnDir, deadDir, quarantineDir} {
		if err := os.MkdirAll(s.path(d), dirPerm); err != nil {
			return nil, fmt.Errorf("spool: %w", err)
		}
	}
	if err := s.checkLayout(); err != nil {
		return nil, err
	}
	s.cleanTmp()
	d, err := openDir(s.path(queueDir))
	if err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	s.cleanOutbox()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.build(d)
	}()
	if opts.MaintenanceInterval > 0 {
		s.wg.Add(1)
		go s.background()
	}
	return s, nil
}

// checkLayout reads the layout version of the directory, or writes it in a
// new spool.
func (s *Spool) checkLayout() error {
	path := s.path(layoutFile)
	data, err := readFileRegular(path, 1<<16)
	if isNotExist(err) {
		data, _ = json.Marshal(map[string]any{"format": "odmr-spool", "version": layoutVersion})
		if err := writeAtomic(s.path(tmpDir), path, append(data, '\n')); err != nil {
			return fmt.Errorf("spool: %w", err)
		}
		return nil
	} else if err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	var v struct {
		Version int `json:"version"`
	}
	if err := json.Unmarshal(data, &v); err != nil {
		return fmt.Errorf("spool: %s: %w", path, err)
	}
	if v.Version != layoutVersion {
		return fmt.Errorf("spool: %s: layout version %d, this package reads version %d", path, v.Version, layoutVersion)
	}
	return nil
}

// buildNow builds the index before returning, for a read-only spool.
func (s *Spool) buildNow() error {
	d, err := openDir(s.path(queueDir))
	if err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	s.build(d)
	return s.idx.wait(context.Background())
}

// restoreMarker creates the marker of a committed message if it is
// missing, as it can be after a power failure.
func (s *Spool) restoreMarker(dir, id string) error {
	path := s.markerPath(dir, id)
	if _, err := os.Stat(path); err == nil {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(path), dirPerm); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, filePerm)
	if errors.Is(err, fs.ErrExist) {
		return nil
	} else if err != nil {
		return err
	}
	s.log.Info("spool: restored missing domain marker", "id", id, "dir", dir)
	return f.Close()
}

// removeOrphanBody removes a body whose envelope does not exist, unless
// someone holds it: an Enqueue that has not committed yet, or a Complete
// removing the message.
func (s *Spool) removeOrphanBody(id string) {
	f, _, err := lockPath(s.bodyPath(id))
	if f == nil || err != nil {
		return
	}
	defer f.Close()
	if _, err := os.Stat(s.envPath(id)); !isNotExist(err) {
		return
	}
	if err := os.Remove(s.bodyPath(id)); err == nil {
		s.log.Info("spool: removed a body without envelope, left by a crash", "id", id)
	}
}

// cleanTmp removes temporary files left by crashes.
func (s *Spool) cleanTmp() {
	names, err := readNames(s.path(tmpDir))
	if err != nil {
		s.log.Warn("spool: cannot list temporary files", "err", err)
		return
	}
	for _, n := range names {
		if len(n) < idLen || !isID(n[:idLen]) || time.Since(idTime(n[:idLen])) < tmpGrace {
			continue
		}
		path := filepath.Join(s.path(tmpDir), n)
		f, _, err := lockPath(path)
		if f == nil || err != nil {
			continue
		}
		os.Remove(path)
		f.Close()
	}
}

// cleanMarker removes the marker of id in dir if, once locked, the
// envelope shows nothing queued there.
func (s *Spool) cleanMarker(dir, id string) {
	f, _, err := lockPath(s.markerPath(dir, id))
	if f == nil || err != nil {
		return
	}
	defer f.Close()
	env, err := readEnvelope(s.envPath(id), id)
	if isNotExist(err) || err == nil && !env.queuedIn(dir) {
		removeIfExists(s.markerPath(dir, id))
	}
}

// Close stops the background work, waits for it and releases the leases
// still held by the Spool's batches. The Spool cannot be used afterwards.
func (s *Spool) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	held := make(map[*message]bool)
	for _, m := range s.leases {
		held[m] = true
	}
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
	s.refreshMu.Lock()
	if s.sweep != nil {
		s.sweep.Close()
		s.sweep = nil
	}
	s.refreshMu.Unlock()
	for m := range held {
		m.release(stateReleased)
	}
	return nil
}

var errClosed = errors.New("spool: closed")

// errReadOnly is returned by what would change a spool opened ReadOnly.
var errReadOnly = errors.New("spool: opened read-only")

// checkWritable is checkOpen for what changes the spool.
func (s *Spool) checkWritable() error {
	if s.readOnly {
		return errReadOnly
	}
	return s.checkOpen()
}

// isSpool returns an error matching ErrNotSpool unless dir holds a spool.
func isSpool(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("%w: %s is not a directory", ErrNotSpool, dir)
	}
	if _, err := os.Lstat(filepath.Join(dir, layoutFile)); errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%w: %s has no %s", ErrNotSpool, dir, layoutFile)
	}
	return nil
}

func (s *Spool) checkOpen() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errClosed
	}
	return nil
}

// HasMail reports whether recipients in any of domains are queued. It
// reads one directory entry per domain from disk, so it sees what other
// processes did, and costs the same whatever the size of the queue.
// Recipients leased by a session count as queued.
func (s *Spool) HasMail(ctx context.Context, domains []string) (bool, error) {
	if err := s.checkOpen(); err != nil {
		return false, err
	}
	for _, d := range domains {
		if err := ctx.Err(); err != nil {
			return false, err
		}
		has, err := s.hasMarker(dirName(canonical(d)))
		if has || err != nil {
			return has, err
		}
	}
	return false, nil
}

// hasMarker reports whether domain directory dir holds a marker: a
// regular file named like an ID, as its directory entry says.
func (s *Spool) hasMarker(dir string) (bool, error) {
	f, err := openDir(filepath.Join(s.path(domainsDir), dir))
	if isNotExist(err) {
		return false, nil
	} else if err != nil {
		return false, fmt.Errorf("spool: %w", err)
	}
	defer f.Close()
	for {
		entries, err := f.ReadDir(16)
		for _, e := range entries {
			if isID(e.Name()) && e.Type().IsRegular() {
				return true, nil
			}
		}
		if err == io.EOF {
			return false, nil
		} else if err != nil {
			return false, fmt.Errorf("spool: %w", err)
		}
	}
}

// canonical returns a domain as RecipientDomain does.
func canonical(domain string) string { return odmr.RecipientDomain("@" + domain) }

// Claim starts delivering the mail queued for domains. The batch leases the
// messages one at a time, in arrival order; see [odmr.Batch].
func (s *Spool) Claim(ctx context.Context, domains []string) (odmr.Batch, error) {
	if err := s.checkWritable(); err != nil {
		return nil, err
	}
	b := &batch{s: s, considered: make(map[string]bool)}
	seen := make(map[string]bool)
	for _, d := range domains {
		dir := dirName(canonical(d))
		if !seen[dir] {
			seen[dir] = true
			b.dirs = append(b.dirs, dir)
		}
	}
	return b, nil
}

// MessageInfo describes a queued message.
type MessageInfo struct {
	// Envelope is the message's envelope; To lists all its recipients.
	Envelope odmr.Envelope
	// Recipients holds the state of each recipient, in envelope order.
	Recipients []RecipientInfo
}

// RecipientInfo is the state of one recipient of a queued message.
type RecipientInfo struct {
	Addr  string
	State State
	// Attempts counts the deliveries that failed temporarily.
	Attempts    int
	LastAttempt time.Time
	// LastError is the error of the last failed attempt, or the permanent
	// failure; errors.As finds the *odmr.Error of an SMTP reply in it.
	LastError error
}

// Stat reads the state of message id from disk. A message that is no longer
// queued gives an error matching fs.ErrNotExist.
func (s *Spool) Stat(id string) (MessageInfo, error) {
	if !isID(id) {
		return MessageInfo{}, fmt.Errorf("spool: no message %q: %w", id, fs.ErrNotExist)
	}
	env, err := readEnvelope(s.envPath(id), id)
	if isNotExist(err) {
		return MessageInfo{}, fmt.Errorf("spool: no message %s: %w", id, fs.ErrNotExist)
	} else if err != nil {
		return MessageInfo{}, err
	}
	info := MessageInfo{Envelope: env.envelope(nil)}
	for _, r := range env.Recipients {
		info.Envelope.To = append(info.Envelope.To, r.Addr)
		info.Recipients = append(info.Recipients, RecipientInfo{
			Addr: r.Addr, State: r.State, Attempts: r.Attempts,
			LastAttempt: r.LastAttempt, LastError: r.LastError.err(),
		})
	}
	return info, nil
}

// background runs the periodic maintenance and hands new DSNs to the
// Bouncer.
func (s *Spool) background() {
	defer s.wg.Done()
	t := time.NewTicker(s.opts.MaintenanceInterval)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-s.kick:
			if _, err := s.flush(s.ctx, true); err != nil && s.ctx.Err() == nil {
				s.log.Warn("spool: cannot send DSNs", "err", err)
			}
		case <-t.C:
			s.maintain(s.ctx)
		}
	}
}

// maintain refreshes part of the index, expires old messages and
// retries DSNs. While Open's index is being built, only DSNs are retried.
func (s *Spool) maintain(ctx context.Context) {
	if s.idx.isReady() {
		s.reconcileSome(s.opts.RefreshDomains)
		if n, err := s.Expire(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("spool: expiry failed", "err", err)
		} else if n > 0 {
			s.log.Info("spool: expired messages", "count", n)
		}
	}
	if _, err := s.flush(ctx, true); err != nil && ctx.Err() == nil {
		s.log.Warn("spool: cannot send DSNs", "err", err)
	}
}

// kickBouncer wakes the background goroutine to send new DSNs.
func (s *Spool) kickBouncer() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// logUnreadable logs an unreadable envelope, once per process.
func (s *Spool) logUnreadable(id string, err error) {
	s.logOnce(id, "spool: skipping message with unreadable envelope; the file is left in place", "id", id, "err", err)
}

// logOnce logs an error about something in the spool that cannot be read,
// once per process and key. At most maxLoggedKeys keys are remembered:
// past that, a damaged spool is logged about again rather than growing
// memory.
func (s *Spool) logOnce(key, msg string, args ...any) {
	s.mu.Lock()
	logged := s.bad[key]
	if !logged {
		if len(s.bad) >= maxLoggedKeys {
			clear(s.bad)
		}
		s.bad[key] = true
	}
	s.mu.Unlock()
	if !logged {
		s.log.Error(msg, args...)
	}
}

// maxLoggedKeys bounds what logOnce remembers.
const maxLoggedKeys = 10000

func (s *Spool) path(name ...string) string {
	return filepath.Join(append([]string{s.dir}, name...)...)
}

func (s *Spool) envPath(id string) string  { return filepath.Join(s.dir, queueDir, id+".json") }
func (s *Spool) bodyPath(id string) string { return filepath.Join(s.dir, queueDir, id+".eml") }
func (s *Spool) markerPath(dir, id string) string {
	return filepath.Join(s.dir, domainsDir, dir, id)
}

var _ odmr.QueueSource = (*Spool)(nil)
