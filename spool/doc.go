// Package spool is a durable mail queue for an ODMR provider: an
// [odmr.QueueSource] kept in a directory, whose messages survive crashes and
// restarts and which several provider processes may share.
//
// An SMTP intake queues mail with [Spool.Enqueue]; the [odmr.Provider]
// pulls it with HasMail and Claim when a customer sends ATRN. Permanent
// failures and messages queued longer than [Options.MaxAge] are reported to
// their senders with delivery status notifications (RFC 3464), which a
// [Bouncer] sends: [SMTPBouncer] through a smarthost, [DirBouncer] into a
// directory.
//
// # Layout
//
//	spool.json                  layout version
//	queue/<id>.eml              message body, CRLF line endings, never changed
//	queue/<id>.json             envelope and recipient states ("version": 1)
//	domains/<domain>/<id>       empty marker: recipients queued in domain
//	dsn/<id>.eml, <id>.json     DSNs waiting for the Bouncer
//	dead/                       DSNs that could not be delivered
//	quarantine/<id>.*           damaged messages and a .reason, held aside
//	tmp/                        files being written
//
// # Crash safety
//
// Every file is written under a temporary name, fsynced, renamed into
// place, and its directory fsynced. A message is committed by the rename of
// its envelope, after its body is in place: a crash at any instant leaves
// either the whole message or nothing, and Enqueue returns nil only once it
// is committed. Every change of state replaces the envelope the same way.
// Open removes the debris of interrupted writes and restores markers a
// power failure may have lost.
//
// # Damage
//
// What the spool did not write is never read as if it had: a FIFO, device
// or symbolic link named like a spool file is not opened (it could hang
// the process) but skipped and logged, and a domain directory that cannot
// be read is skipped and logged, costing that domain its mail (HasMail
// fails, so ATRN gets 451) and no other domain anything. A message whose
// body is missing, not a regular file, or not the size its envelope
// recorded is quarantined: moved whole into quarantine/ with a .reason
// file, logged at error level, listed by [Spool.Quarantined], no longer
// counted by HasMail, and never delivered or bounced until the operator
// repairs it and moves it back into queue/ (Open restores its markers).
// When recording a delivery fails (a full disk), Complete returns the
// error and the recipients stay queued; the provider then stops the
// session (see [odmr.Message]).
//
// # Sharing
//
// Leases are flock(2) locks on the marker files, one per message and
// domain, so two sessions, two Spools or two processes never hold the same
// recipients, and the kernel releases the leases of a process that dies.
// Which messages are queued for a domain is read from its marker directory,
// which every process keeps current: HasMail costs one directory read per
// domain, whatever the size of the queue, and sees what other processes
// did. Sizes and ages for quotas, QueueStats, List and Expire are kept in
// memory, about 80 bytes per queued message, built in the background after
// Open (see [Spool.WaitIndexed]) and brought up to date with what other
// processes did a few domains at each maintenance ([Options.RefreshDomains]);
// no periodic work walks the whole queue. The file system must be
// local: flock over NFS does not give these guarantees. Files are private
// to their owner (0600, directories 0700), so the processes sharing a spool
// run as one user.
//
// # Administration
//
// The Spool is a [queueadmin.Admin]: an operator lists messages, shows,
// deletes, bounces, holds and releases them, safely while providers use
// the spool (see [Spool.Hold] and [Spool.Delete]). A held message keeps
// its recipients queued but has no markers, so no session is offered it
// and it does not expire until released. [Options.ReadOnly] opens a spool
// to read it without changing anything.
//
// # Delivery semantics
//
// A message with recipients in several domains is delivered to each
// domain's customer separately, and each recipient is settled on its own:
// delivered and permanently failed recipients leave the queue, the others
// stay with their attempts counted and their last error recorded, and the
// files go when no recipient is left. As with any SMTP queue, a delivery
// interrupted between the customer's final 250 and Complete is made again:
// delivery is at least once, and exactly once when Complete runs.
package spool
