package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/odmrtrace"
)

// metricsFlags configure the Prometheus endpoint.
type metricsFlags struct {
	addr          string
	maxDomains    int
	queueInterval time.Duration
	maxConns      int
	maxScrapes    int
	readTimeout   time.Duration
	writeTimeout  time.Duration
	idleTimeout   time.Duration
}

// Defaults of the metrics flags.
const (
	defaultMetricsMaxDomains    = 100
	defaultMetricsQueueInterval = 15 * time.Second
	defaultMetricsMaxConns      = 16
	defaultMetricsMaxScrapes    = 4
	defaultMetricsReadTimeout   = 10 * time.Second
	defaultMetricsWriteTimeout  = time.Minute
	defaultMetricsIdleTimeout   = 2 * time.Minute
)

// metricsMaxHeaderBytes bounds the request headers of a scrape. It has no
// flag: a scraper sends a few hundred bytes (Prometheus: Accept,
// User-Agent, X-Prometheus-Scrape-Timeout-Seconds), and 16 KiB leaves room
// for the headers of a proxy in front while bounding what each of the
// -metrics-max-conns connections may make the program hold.
const metricsMaxHeaderBytes = 16 << 10

// otherDomain labels the queue series of the domains past
// -metrics-max-domains, added up.
const otherDomain = "other"

func (m *metricsFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&m.addr, "metrics", "", "serve Prometheus metrics at http://`ADDR`/metrics (\"\" for none); bind it to loopback or an internal network")
	fs.IntVar(&m.maxDomains, "metrics-max-domains", defaultMetricsMaxDomains,
		"give at most `N` domains series of their own in the queue metrics, those with the most mail; the others are added up as domain=\"other\" (0: all added up)")
	fs.DurationVar(&m.queueInterval, "metrics-queue-interval", defaultMetricsQueueInterval,
		"ask the queue for its sizes at most once per `DURATION`, after a failure too; scrapes in between get the last answer")
	fs.IntVar(&m.maxConns, "metrics-max-conns", defaultMetricsMaxConns,
		"serve at most `N` connections to -metrics at once; further ones are closed at once, so that they cannot take the file descriptors the mail listeners need")
	fs.IntVar(&m.maxScrapes, "metrics-max-scrapes", defaultMetricsMaxScrapes,
		"answer at most `N` scrapes of -metrics at once; further ones get 503")
	fs.DurationVar(&m.readTimeout, "metrics-read-timeout", defaultMetricsReadTimeout,
		"close a connection to -metrics whose client takes longer than `DURATION` to send its request")
	fs.DurationVar(&m.writeTimeout, "metrics-write-timeout", defaultMetricsWriteTimeout,
		"give up a reply of -metrics not sent within `DURATION`; a scrape not ready within half of it gets 503, and the queue is given a sixth of it to tell its sizes")
	fs.DurationVar(&m.idleTimeout, "metrics-idle-timeout", defaultMetricsIdleTimeout,
		"close a connection to -metrics left idle between scrapes for `DURATION`")
}

func (m *metricsFlags) check() error {
	if m.maxDomains < 0 {
		return fmt.Errorf("-metrics-max-domains: want 0 or more, not %d", m.maxDomains)
	}
	if m.maxConns <= 0 {
		return fmt.Errorf("-metrics-max-conns: want 1 or more, not %d", m.maxConns)
	}
	if m.maxScrapes <= 0 {
		return fmt.Errorf("-metrics-max-scrapes: want 1 or more, not %d", m.maxScrapes)
	}
	for _, d := range []struct {
		flag string
		v    time.Duration
	}{{"-metrics-read-timeout", m.readTimeout}, {"-metrics-write-timeout", m.writeTimeout}, {"-metrics-idle-timeout", m.idleTimeout}} {
		if d.v <= 0 {
			return fmt.Errorf("%s: want a positive duration, not %v", d.flag, d.v)
		}
	}
	if m.queueInterval <= 0 {
		return fmt.Errorf("-metrics-queue-interval: want a positive duration, not %v", m.queueInterval)
	}
	return nil
}

// providerMetrics turns the provider's trace events, and the intake's
// queued messages, into Prometheus metrics.
type providerMetrics struct {
	sessionsActive  prometheus.Gauge
	sessions        *prometheus.CounterVec
	auth            *prometheus.CounterVec
	atrn            *prometheus.CounterVec
	deliveries      *prometheus.CounterVec
	deliveryBytes   *prometheus.CounterVec
	latency         prometheus.Histogram
	queued          prometheus.Counter
	queuedBytes     prometheus.Counter
	registry        *prometheus.Registry
	queueCollector  *queueCollector // nil when the queue cannot tell its sizes
	queueStatsFails prometheus.Counter
}

func newProviderMetrics(q odmr.QueueSource, f metricsFlags, log *slog.Logger) *providerMetrics {
	const ns, sub = "odmr", "provider"
	m := &providerMetrics{
		sessionsActive: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "sessions_active",
			Help: "ODMR sessions in progress."}),
		sessions: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "sessions_total",
			Help: "ODMR sessions ended, by the state they ended in (initial, authenticated, reversed) and how (ok, refused, timeout, evicted, shutdown, rejected, error)."},
			[]string{"state", "outcome"}),
		auth: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "auth_total",
			Help: "AUTH results (success, failure, ratelimited, tempfail) by SASL mechanism (none: refused before the mechanism was looked at)."},
			[]string{"mechanism", "result"}),
		atrn: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "atrn_total",
			Help: "Replies to ATRN by code: 250 reversed, 453 no mail, 450 refused, 530 not authenticated, ..."},
			[]string{"code"}),
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "deliveries_total",
			Help: "Recipients of messages handed to customers, by result (delivered, deferred, bounced); a message counts once per recipient."},
			[]string{"result"}),
		deliveryBytes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "delivery_bytes_total",
			Help: "Size of the messages counted by odmr_provider_deliveries_total, by result; once per recipient."},
			[]string{"result"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "delivery_latency_seconds",
			Help:    "Time from a message's arrival in the queue to its delivery to the customer, per delivered recipient.",
			Buckets: []float64{1, 10, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, 86400, 2 * 86400, 5 * 86400}}),
		queued: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "messages_queued_total",
			Help: "Messages accepted by the SMTP intake and queued."}),
		queuedBytes: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "queued_bytes_total",
			Help: "Size of the messages queued by the SMTP intake, Received field included."}),
		queueStatsFails: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "queue_stats_errors_total",
			Help: "Failures to read the queue sizes; the last good values are served until the next attempt, -metrics-queue-interval later."}),
		registry: prometheus.NewRegistry(),
	}
	m.registry.MustRegister(m.sessionsActive, m.sessions, m.auth, m.atrn, m.deliveries, m.deliveryBytes,
		m.latency, m.queued, m.queuedBytes,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	// Every label value the program can produce exists from the start,
	// at 0, so that rate() sees the first increment.
	for _, r := range []odmrtrace.DeliveryResult{odmrtrace.Delivered, odmrtrace.Deferred, odmrtrace.Bounced} {
		m.deliveries.WithLabelValues(string(r))
		m.deliveryBytes.WithLabelValues(string(r))
	}
	if qs, ok := q.(odmrtrace.QueueStatser); ok {
		m.queueCollector = &queueCollector{q: qs, max: f.maxDomains, interval: f.queueInterval, timeout: f.queueTimeout(),
			log: log, fails: m.queueStatsFails}
		if ix, ok := q.(indexer); ok {
			m.queueCollector.indexed = ix.Indexed
		}
		m.registry.MustRegister(m.queueCollector, m.queueStatsFails)
	} else {
		log.Warn("odmr-provider: the in-memory queue does not report its size: no queue metrics without -spool or -queue")
	}
	return m
}

// trace returns the hooks that feed m, for odmr.Provider.Trace.
func (m *providerMetrics) trace() *odmrtrace.ProviderTrace {
	return &odmrtrace.ProviderTrace{
		SessionStarted: func(odmrtrace.SessionStart) { m.sessionsActive.Inc() },
		SessionEnded: func(e odmrtrace.SessionEnd) {
			if e.Outcome != odmrtrace.OutcomeRefused {
				m.sessionsActive.Dec()
			}
			m.sessions.WithLabelValues(e.State, string(e.Outcome)).Inc()
		},
		Auth: func(e odmrtrace.AuthEvent) {
			m.auth.WithLabelValues(cmp.Or(e.Mechanism, "none"), string(e.Result)).Inc()
		},
		ATRN: func(e odmrtrace.ATRNEvent) { m.atrn.WithLabelValues(strconv.Itoa(e.Code)).Inc() },
		Delivery: func(e odmrtrace.DeliveryEvent) {
			m.deliveries.WithLabelValues(string(e.Result)).Inc()
			m.deliveryBytes.WithLabelValues(string(e.Result)).Add(float64(e.Bytes))
			if e.Result == odmrtrace.Delivered && e.Latency > 0 {
				m.latency.Observe(e.Latency.Seconds())
			}
		},
	}
}

// messageQueued counts a message the intake queued; m may be nil.
func (m *providerMetrics) messageQueued(size int64) {
	if m == nil {
		return
	}
	m.queued.Inc()
	m.queuedBytes.Add(float64(size))
}

var (
	queueMessagesDesc = prometheus.NewDesc("odmr_provider_queue_messages",
		"Messages queued per recipient domain; a message for several domains counts in each.", []string{"domain"}, nil)
	queueBytesDesc = prometheus.NewDesc("odmr_provider_queue_bytes",
		"Size of the messages queued per recipient domain.", []string{"domain"}, nil)
	queueOldestDesc = prometheus.NewDesc("odmr_provider_queue_oldest_message_timestamp_seconds",
		"Arrival time (Unix seconds) of the oldest message queued per recipient domain; time() minus it is its age.", []string{"domain"}, nil)
	queueReadyDesc = prometheus.NewDesc("odmr_provider_queue_index_ready",
		"1 when the queue can tell its sizes; 0 while the spool builds its index after start (minutes for a million messages), or if building it failed (see the log): the per-domain odmr_provider_queue_* gauges are absent meanwhile.", nil, nil)
)

// indexer is a queue that builds an index in the background before it can
// tell its sizes, and says without waiting whether it is done, as
// spool.Spool does.
type indexer interface {
	Indexed() bool
}

// queueCollector serves the queue's sizes per domain: the domains with
// the most mail get series of their own, up to max, and the others are
// added up under domain="other", so that the number of series stays
// bounded whatever the number of customers. It asks the queue at most once
// per interval (the spool answers from memory, but in time proportional
// to the messages queued). While the queue builds its index, it does not
// ask, since the answer would wait for the index: the scrape is served at
// once, with the other metrics, and odmr_provider_queue_index_ready 0.
type queueCollector struct {
	q        odmrtrace.QueueStatser
	indexed  func() bool // nil: the queue can always tell
	max      int
	interval time.Duration
	timeout  time.Duration // for one QueueStats
	log      *slog.Logger
	fails    prometheus.Counter

	mu      sync.Mutex
	fetched time.Time
	stats   []odmrtrace.QueueStats // capped, as served
}

func (c *queueCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- queueMessagesDesc
	ch <- queueBytesDesc
	ch <- queueOldestDesc
	ch <- queueReadyDesc
}

func (c *queueCollector) Collect(ch chan<- prometheus.Metric) {
	if c.indexed != nil && !c.indexed() {
		ch <- prometheus.MustNewConstMetric(queueReadyDesc, prometheus.GaugeValue, 0)
		return
	}
	ch <- prometheus.MustNewConstMetric(queueReadyDesc, prometheus.GaugeValue, 1)
	for _, s := range c.current() {
		ch <- prometheus.MustNewConstMetric(queueMessagesDesc, prometheus.GaugeValue, float64(s.Messages), s.Domain)
		ch <- prometheus.MustNewConstMetric(queueBytesDesc, prometheus.GaugeValue, float64(s.Bytes), s.Domain)
		if !s.Oldest.IsZero() {
			ch <- prometheus.MustNewConstMetric(queueOldestDesc, prometheus.GaugeValue, float64(s.Oldest.UnixNano())/1e9, s.Domain)
		}
	}
}

// current returns the capped sizes, asking the queue when the last answer
// is older than the interval.
func (c *queueCollector) current() []odmrtrace.QueueStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.fetched.IsZero() && time.Since(c.fetched) < c.interval {
		return c.stats
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	stats, err := c.q.QueueStats(ctx)
	// A failure is not retried before the interval either: scrapes
	// meanwhile do not wait for a queue that does not answer.
	c.fetched = time.Now()
	if err != nil {
		c.fails.Inc()
		c.log.Warn("odmr-provider: metrics: cannot read the queue sizes; serving the last ones", "err", err)
		return c.stats
	}
	c.stats = capDomains(stats, c.max)
	return c.stats
}

// capDomains keeps the max domains with the most messages (the bytes,
// then the name, break ties) and adds the others up as otherDomain: their
// counts summed, the oldest of their oldest messages.
func capDomains(stats []odmrtrace.QueueStats, max int) []odmrtrace.QueueStats {
	stats = slices.Clone(stats)
	slices.SortFunc(stats, func(a, b odmrtrace.QueueStats) int {
		return cmp.Or(cmp.Compare(b.Messages, a.Messages), cmp.Compare(b.Bytes, a.Bytes), cmp.Compare(a.Domain, b.Domain))
	})
	if len(stats) <= max {
		return stats
	}
	other := odmrtrace.QueueStats{Domain: otherDomain}
	for _, s := range stats[max:] {
		other.Messages += s.Messages
		other.Bytes += s.Bytes
		if !s.Oldest.IsZero() && (other.Oldest.IsZero() || s.Oldest.Before(other.Oldest)) {
			other.Oldest = s.Oldest
		}
	}
	return append(stats[:max:max], other)
}

// scrapeTimeout is how long a scrape may take before it is answered
// with 503: half of -metrics-write-timeout, so that the 503 can still be
// written.
func (m *metricsFlags) scrapeTimeout() time.Duration { return m.writeTimeout / 2 }

// queueTimeout is how long one QueueStats may take: a third of the
// scrape's time, so that a scrape that waits for the queue still gets an
// answer, with the last sizes known.
func (m *metricsFlags) queueTimeout() time.Duration { return m.writeTimeout / 6 }

// startMetrics serves m on the -metrics address, as f says, until the
// returned func is called.
func startMetrics(f metricsFlags, m *providerMetrics, log *slog.Logger) (stop func(), err error) {
	l, err := listen(f.addr, "metrics")
	if err != nil {
		return nil, err
	}
	log.Info("odmr-provider: metrics listening", "addr", l.Addr().String(), "path", "/metrics")
	if !isInternal(l.Addr()) {
		log.Warn("odmr-provider: the metrics listener is reachable from other networks: bind -metrics to loopback or an internal address",
			"addr", l.Addr().String())
	}
	return serveMetrics(l, f, m, log), nil
}

// serveMetrics serves m on l with the limits of f: at most f.maxConns
// connections and f.maxScrapes scrapes at once, the timeouts, and
// metricsMaxHeaderBytes.
func serveMetrics(l net.Listener, f metricsFlags, m *providerMetrics, log *slog.Logger) (stop func()) {
	ln := &capListener{Listener: l, slots: make(chan struct{}, f.maxConns)}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{
		ErrorLog:            slogPrinter{log},
		MaxRequestsInFlight: f.maxScrapes,
		Timeout:             f.scrapeTimeout(),
	}))
	srv := &http.Server{
		Handler: mux,
		// A GET has no body: its request is its headers.
		ReadHeaderTimeout: f.readTimeout,
		ReadTimeout:       f.readTimeout,
		WriteTimeout:      f.writeTimeout,
		IdleTimeout:       f.idleTimeout,
		MaxHeaderBytes:    metricsMaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("odmr-provider: metrics listener failed", "err", err)
		}
	}()
	return func() { srv.Close() }
}

// capListener accepts connections while fewer than cap(slots) are open,
// and closes the others as soon as they are accepted: a client that opens
// connections to the metrics listener and holds them (a slowloris, or
// many scrapers) costs the program a bounded number of file descriptors,
// not all of them, which the ODMR and SMTP listeners share.
type capListener struct {
	net.Listener
	slots chan struct{}
}

func (l *capListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		select {
		case l.slots <- struct{}{}:
			return &cappedConn{Conn: c, slots: l.slots}, nil
		default:
			c.Close()
		}
	}
}

// cappedConn frees its slot of a capListener when it is closed.
type cappedConn struct {
	net.Conn
	slots chan struct{}
	once  sync.Once
}

func (c *cappedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { <-c.slots })
	return err
}

// isInternal reports whether a listener's address is loopback or private.
func isInternal(a net.Addr) bool {
	ta, ok := a.(*net.TCPAddr)
	return ok && (ta.IP.IsLoopback() || ta.IP.IsPrivate())
}

// slogPrinter gives promhttp a logger.
type slogPrinter struct{ log *slog.Logger }

func (p slogPrinter) Println(v ...any) {
	p.log.Warn("odmr-provider: metrics: " + fmt.Sprint(v...))
}
