// Package pgqueue is a mail queue for ODMR providers in PostgreSQL (13 or
// later): an [odmr.QueueSource] that several provider nodes share, so a
// provider can run on many machines with no single point of failure
// (PostgreSQL with a standby and failover, and a connection string
// naming every host with target_session_attrs=read-write). A provider on
// one machine needs none of this: the spool package serves it.
//
// An SMTP intake on any node queues mail with [Queue.Enqueue]; an
// [odmr.Provider] on any node pulls it with HasMail and Claim when a
// customer sends ATRN. Permanent failures and messages queued longer than
// [Options.MaxAge] are reported to their senders with delivery status
// notifications (RFC 3464), which any node's [Bouncer] sends.
//
// # Tables
//
//	odmr_schema            migrations applied (see Migrate)
//	odmr_messages          envelope: sender, arrival, size, DSN RET and ENVID
//	odmr_recipients        one row per recipient: state, attempts, last error, NOTIFY, ORCPT
//	odmr_pending           (domain, message_id) with recipients queued there: the
//	                       index HasMail reads, the lease (lease_until, fence),
//	                       and whether the operator holds the message (held)
//	odmr_domain_counts     messages and bytes offered per domain, for QueueStats
//	odmr_body              the body in chunks of Options.ChunkSize bytes
//	odmr_reports           DSNs waiting for a Bouncer
//	odmr_accounts          customers, for Accounts
//	odmr_account_domains   the domains each customer may pull
//
// The package creates and upgrades them itself ([Migrate]), under an
// advisory lock, so nodes may start at once.
//
// # Semantics
//
// Those of the spool: enqueue is one transaction (envelope, DSN requests
// and body), so a message is queued whole or not at all. A message with
// recipients in several domains is delivered to each domain's customer
// separately, and each recipient is settled on its own: delivered and
// permanently failed recipients leave the queue, the others stay with
// their attempts counted and their last error recorded, and the message
// goes when no recipient is left.
//
// Leases are rows of odmr_pending taken with FOR UPDATE SKIP LOCKED, so
// two nodes never hold the same recipients. A lease lasts
// [Options.LeaseTTL] by the database's clock, never a node's, and reading
// the body renews it; the mail of a node that dies becomes deliverable
// again when its leases lapse. Each lease carries a fencing number: a
// node whose lease lapsed and was taken by another cannot record results
// any more (Complete fails and changes nothing). As with any SMTP queue,
// a delivery interrupted between the customer's final 250 and Complete is
// made again: delivery is at least once, and exactly once when Complete
// runs.
//
// Bodies are streamed both ways: Enqueue writes a chunk as soon as it has
// one, and a message's body is read one chunk per query, so no connection
// is held while a slow customer reads.
//
// # Operators
//
// A Queue is an [queueadmin.Admin], so the queue tools of odmr-provider
// list, show, delete, bounce, hold and release its messages from any
// node while the others deliver, and an [odmrtrace.QueueStatser], so a
// metrics exporter shows what is queued per domain without reading the
// messages.
package pgqueue
