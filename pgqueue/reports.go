package pgqueue

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/internal/dsnreport"
)

// The DSN outbox.
//
// A DSN is written to odmr_reports in the transaction that records the
// failure it reports, so a failure is never recorded without its report.
// Any node may send it: a node claims a due report by moving its
// next_attempt past the lease time, hands it to its Bouncer with no
// transaction open, and deletes it once the Bouncer returns nil. When the
// Bouncer fails, the error and the attempt are recorded and the report is
// tried again later, with a delay that doubles up to an hour. A report the
// Bouncer refuses permanently, or that could not be sent within MaxAge, is
// marked dead and logged: it is never dropped silently. A node that dies
// while sending leaves a report that is sent again after the lease time:
// at least once, like mail.

// maxBackoff bounds the delay between two attempts at a DSN.
const maxBackoff = time.Hour

// reportedMessage is what a DSN says of the original message.
type reportedMessage struct {
	id       int64
	from     string
	envID    string
	ret      odmr.DSNReturn
	received time.Time
	size     int64
	bodyType odmr.BodyType
}

// queueDSN writes, in tx, the DSN reporting rcpts (failed or relayed) of
// msg.
func (q *Queue) queueDSN(ctx context.Context, tx pgx.Tx, msg reportedMessage, rcpts []dsnreport.Recipient, now time.Time) error {
	headers, err := dsnreport.ReadHeaderSection(txBody(ctx, tx, msg.id), dsnreport.MaxReportedHeaders)
	if err != nil {
		return fmt.Errorf("odmr: reading the headers of message %d for its DSN: %w", msg.id, err)
	}
	var reportID int64
	if err := tx.QueryRow(ctx, "SELECT nextval(pg_get_serial_sequence('odmr_reports', 'id'))").Scan(&reportID); err != nil {
		return fmt.Errorf("odmr: writing a DSN: %w", err)
	}
	rep := &dsnreport.Report{
		ID: "r" + strconv.FormatInt(reportID, 10) + "." + strconv.FormatInt(msg.id, 10), Hostname: q.opts.Hostname,
		Sender: msg.from, MsgID: strconv.FormatInt(msg.id, 10), EnvID: msg.envID,
		Arrival: msg.received, Date: now, Rcpts: rcpts, Headers: headers,
	}
	if dsnreport.ReturnsFull(msg.ret, msg.bodyType, msg.size, rcpts) {
		rep.Full, rep.EightBit = txBody(ctx, tx, msg.id), msg.bodyType == odmr.Body8BitMIME
	}
	var buf bytes.Buffer
	if err := rep.Encode(&buf); err != nil {
		return fmt.Errorf("odmr: writing a DSN: %w", err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO odmr_reports (id, report_for, recipient, body_type, utf8, content)
		VALUES ($1, $2, $3, $4, $5, $6)`, reportID, msg.id, msg.from, string(rep.BodyType()), rep.UTF8(), buf.Bytes()); err != nil {
		return fmt.Errorf("odmr: writing a DSN: %w", err)
	}
	return nil
}

// txBody reads body id in tx, a chunk at a time.
func txBody(ctx context.Context, tx pgx.Tx, id int64) io.Reader {
	return &chunks{fetch: func(n int) (data []byte, last bool, err error) {
		err = tx.QueryRow(ctx, selectChunk, id, n).Scan(&data, &last)
		return data, last, err
	}}
}

// FlushBounces hands every DSN that is waiting to the Bouncer now,
// ignoring the delay between retries, and returns how many it accepted.
// DSNs another node is sending are skipped. Without a Bouncer it does
// nothing. The first error from the Bouncer is returned; the DSNs stay
// queued.
func (q *Queue) FlushBounces(ctx context.Context) (int, error) {
	if err := q.checkOpen(); err != nil {
		return 0, err
	}
	return q.flush(ctx, false)
}

// PendingBounces returns the number of DSNs waiting to be sent, and of
// those set aside as dead.
func (q *Queue) PendingBounces(ctx context.Context) (pending, dead int, err error) {
	err = q.pool.QueryRow(ctx, "SELECT count(*) FILTER (WHERE NOT dead), count(*) FILTER (WHERE dead) FROM odmr_reports").Scan(&pending, &dead)
	if err != nil {
		return 0, 0, fmt.Errorf("odmr: %w", err)
	}
	return pending, dead, nil
}

// flush sends the DSNs that are due (all waiting ones unless backoff).
func (q *Queue) flush(ctx context.Context, backoff bool) (int, error) {
	if q.opts.Bouncer == nil {
		return 0, nil
	}
	sent := 0
	var after int64
	for {
		id, ok, err := q.sendReport(ctx, after, backoff)
		if err != nil || !ok {
			return sent, err
		}
		after = id
		sent++
	}
}

// sendReport claims the first DSN after ID after that is due, sends it,
// and records the outcome. ok is false when there was none to send.
func (q *Queue) sendReport(ctx context.Context, after int64, backoff bool) (id int64, ok bool, err error) {
	var (
		rcpt, bodyType string
		utf8           bool
		created        time.Time
		attempts       int
		content        []byte
		tooOld         bool
	)
	err = q.pool.QueryRow(ctx, `UPDATE odmr_reports SET next_attempt = now() + $3 * interval '1 millisecond'
			WHERE id = (SELECT id FROM odmr_reports WHERE NOT dead AND id > $1 AND (NOT $2 OR next_attempt <= now())
				ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
			RETURNING id, recipient, body_type, utf8, created, attempts, content,
				created <= now() - $4 * interval '1 millisecond'`,
		after, backoff, q.opts.LeaseTTL.Milliseconds(), q.opts.MaxAge.Milliseconds()).Scan(
		&id, &rcpt, &bodyType, &utf8, &created, &attempts, &content, &tooOld)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("odmr: sending DSNs: %w", err)
	}
	env := odmr.Envelope{
		ID: "r" + strconv.FormatInt(id, 10), From: "", To: []string{rcpt}, Size: int64(len(content)),
		Body: odmr.BodyType(bodyType), UTF8: utf8, Received: created,
	}
	berr := q.opts.Bouncer.Bounce(ctx, env, bytes.NewReader(content))
	// Record the outcome even if ctx ended meanwhile.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), q.opts.QueryTimeout)
	defer cancel()
	if berr == nil {
		if _, err := q.pool.Exec(rctx, "DELETE FROM odmr_reports WHERE id = $1", id); err != nil {
			return id, true, fmt.Errorf("odmr: recording a DSN sent: %w", err)
		}
		return id, true, nil
	}
	if odmr.Permanent(berr) || tooOld {
		q.log.Error("pgqueue: DSN could not be sent and is set aside (dead)", "report", id, "to", rcpt, "err", berr)
		if _, err := q.pool.Exec(rctx, "UPDATE odmr_reports SET dead = true, attempts = attempts + 1, last_error = $2 WHERE id = $1",
			id, clip(berr.Error(), 1000)); err != nil {
			return id, true, fmt.Errorf("odmr: recording a DSN failure: %w", err)
		}
		return id, true, nil
	}
	delay := min(time.Minute<<min(attempts, 10), maxBackoff)
	q.log.Warn("pgqueue: DSN not sent; will retry", "report", id, "to", rcpt, "retry_in", delay, "err", berr)
	if _, err := q.pool.Exec(rctx, `UPDATE odmr_reports SET attempts = attempts + 1, last_error = $2,
		next_attempt = now() + $3 * interval '1 millisecond' WHERE id = $1`,
		id, clip(berr.Error(), 1000), delay.Milliseconds()); err != nil {
		return id, true, fmt.Errorf("odmr: recording a DSN failure: %w", err)
	}
	return id, true, fmt.Errorf("odmr: sending DSN %d: %w", id, berr)
}
