package pgqueue

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5/pgxpool"
)

// Schema migrations.
//
// The schema is versioned in odmr_schema, one row per migration applied.
// Migrate applies the missing ones in one transaction under a
// transaction-scoped advisory lock, so nodes starting at once take turns:
// the first applies them, the others find them applied. Migrations only
// ever get added to the end of the list.

// migrationLock is the advisory lock key that serializes migrations: the
// first eight bytes of "odmr/pgq".
const migrationLock = 0x6f646d722f706771

var migrations = []string{
	// 1: the queue.
	`
CREATE TABLE odmr_messages (
	id         bigserial PRIMARY KEY,
	sender     text NOT NULL,
	received   timestamptz NOT NULL,
	size       bigint NOT NULL DEFAULT 0,
	body_type  text NOT NULL DEFAULT '',
	utf8       boolean NOT NULL DEFAULT false,
	dsn_ret    text NOT NULL DEFAULT '',
	dsn_envid  text NOT NULL DEFAULT ''
);
CREATE INDEX odmr_messages_received ON odmr_messages (received);

CREATE TABLE odmr_recipients (
	message_id    bigint NOT NULL REFERENCES odmr_messages ON DELETE CASCADE,
	n             integer NOT NULL,
	addr          text NOT NULL,
	domain        text NOT NULL,
	state         text NOT NULL DEFAULT 'queued',
	attempts      integer NOT NULL DEFAULT 0,
	last_attempt  timestamptz,
	last_code     integer NOT NULL DEFAULT 0,
	last_enhanced text NOT NULL DEFAULT '',
	last_message  text NOT NULL DEFAULT '',
	last_error    text NOT NULL DEFAULT '',
	notify        text[],
	orcpt_type    text NOT NULL DEFAULT '',
	orcpt         text NOT NULL DEFAULT '',
	PRIMARY KEY (message_id, n)
);

-- One row per domain and message with recipients queued there: what
-- HasMail reads, and the lease on those recipients.
CREATE TABLE odmr_pending (
	domain      text NOT NULL,
	message_id  bigint NOT NULL REFERENCES odmr_messages ON DELETE CASCADE,
	lease_until timestamptz,
	fence       bigint NOT NULL DEFAULT 0,
	PRIMARY KEY (domain, message_id)
);
CREATE INDEX odmr_pending_message ON odmr_pending (message_id);
CREATE SEQUENCE odmr_fence;

CREATE TABLE odmr_body (
	message_id bigint NOT NULL REFERENCES odmr_messages ON DELETE CASCADE,
	n          integer NOT NULL,
	data       bytea NOT NULL,
	PRIMARY KEY (message_id, n)
);

-- Delivery status notifications waiting to be sent.
CREATE TABLE odmr_reports (
	id           bigserial PRIMARY KEY,
	report_for   bigint NOT NULL,
	recipient    text NOT NULL,
	body_type    text NOT NULL DEFAULT '',
	utf8         boolean NOT NULL DEFAULT false,
	created      timestamptz NOT NULL DEFAULT now(),
	attempts     integer NOT NULL DEFAULT 0,
	next_attempt timestamptz NOT NULL DEFAULT now(),
	last_error   text NOT NULL DEFAULT '',
	dead         boolean NOT NULL DEFAULT false,
	content      bytea NOT NULL
);
CREATE INDEX odmr_reports_due ON odmr_reports (next_attempt) WHERE NOT dead;
`,
	// 2: the accounts.
	`
CREATE TABLE odmr_accounts (
	username text PRIMARY KEY,
	secret   text NOT NULL DEFAULT '',
	-- SCRAM credentials, as odmr.SCRAMCredentials.String writes them
	scram    text[] NOT NULL DEFAULT '{}'
);
-- A domain belongs to one account at most, as in the accounts file.
CREATE TABLE odmr_account_domains (
	domain   text PRIMARY KEY,
	username text NOT NULL REFERENCES odmr_accounts ON DELETE CASCADE ON UPDATE CASCADE
);
CREATE INDEX odmr_account_domains_username ON odmr_account_domains (username);
`,
	// 3: held messages (admin.go) and per-domain counts (stats.go).
	`
ALTER TABLE odmr_pending ADD COLUMN held boolean NOT NULL DEFAULT false;
-- What HasMail, Next, Expire and the quotas read: the rows not held.
CREATE INDEX odmr_pending_offered ON odmr_pending (domain, message_id) WHERE NOT held;

-- The number and size of the messages offered per domain: one row per
-- domain with the sums and the arrival of the oldest (-infinity if
-- unknown), and a row per change since, with oldest NULL, written by a
-- trigger on odmr_pending and added up from time to time (compactStats):
-- never an update of a shared row, so intakes do not wait for each other.
CREATE TABLE odmr_domain_counts (
	domain   text NOT NULL,
	messages bigint NOT NULL,
	bytes    bigint NOT NULL,
	oldest   timestamptz
);
CREATE INDEX odmr_domain_counts_changed ON odmr_domain_counts (domain) WHERE oldest IS NULL;

CREATE FUNCTION odmr_count_pending() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
	sz bigint;
BEGIN
	IF TG_OP = 'INSERT' OR TG_OP = 'UPDATE' THEN
		IF NOT NEW.held THEN
			SELECT size INTO sz FROM odmr_messages WHERE id = NEW.message_id;
			INSERT INTO odmr_domain_counts (domain, messages, bytes) VALUES (NEW.domain, 1, coalesce(sz, 0));
		END IF;
	END IF;
	IF TG_OP = 'DELETE' OR TG_OP = 'UPDATE' THEN
		IF NOT OLD.held THEN
			SELECT size INTO sz FROM odmr_messages WHERE id = OLD.message_id;
			INSERT INTO odmr_domain_counts (domain, messages, bytes) VALUES (OLD.domain, -1, -coalesce(sz, 0));
		END IF;
	END IF;
	RETURN NULL;
END
$$;
CREATE TRIGGER odmr_pending_insert_delete AFTER INSERT OR DELETE ON odmr_pending
	FOR EACH ROW EXECUTE FUNCTION odmr_count_pending();
CREATE TRIGGER odmr_pending_held AFTER UPDATE OF held ON odmr_pending
	FOR EACH ROW WHEN (OLD.held IS DISTINCT FROM NEW.held) EXECUTE FUNCTION odmr_count_pending();

INSERT INTO odmr_domain_counts (domain, messages, bytes)
	SELECT p.domain, count(*), coalesce(sum(m.size), 0)
	FROM odmr_pending p JOIN odmr_messages m ON m.id = p.message_id
	GROUP BY p.domain;
`,
}

// SchemaVersion is the version of the schema this package uses: the
// number of migrations it knows.
const SchemaVersion = 3

// Migrate brings the schema of the database up to date. It is idempotent
// and safe to call from several nodes at once; [Open] and [OpenAccounts]
// call it. It fails if the database has a newer schema than this package
// knows.
func Migrate(ctx context.Context, pool *pgxpool.Pool) error {
	tx, err := pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("odmr: migrating the schema: %w", err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", int64(migrationLock)); err != nil {
		return fmt.Errorf("odmr: migrating the schema: %w", err)
	}
	if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS odmr_schema (
		version integer PRIMARY KEY,
		applied timestamptz NOT NULL DEFAULT now())`); err != nil {
		return fmt.Errorf("odmr: migrating the schema: %w", err)
	}
	var have int
	if err := tx.QueryRow(ctx, "SELECT coalesce(max(version), 0) FROM odmr_schema").Scan(&have); err != nil {
		return fmt.Errorf("odmr: migrating the schema: %w", err)
	}
	if have > len(migrations) {
		return fmt.Errorf("odmr: the database has schema version %d, newer than this program's %d", have, len(migrations))
	}
	for v := have + 1; v <= len(migrations); v++ {
		if _, err := tx.Exec(ctx, migrations[v-1]); err != nil {
			return fmt.Errorf("odmr: applying schema version %d: %w", v, err)
		}
		if _, err := tx.Exec(ctx, "INSERT INTO odmr_schema (version) VALUES ($1)", v); err != nil {
			return fmt.Errorf("odmr: applying schema version %d: %w", v, err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("odmr: migrating the schema: %w", err)
	}
	return nil
}
