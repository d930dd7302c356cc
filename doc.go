// Package odmr implements On-Demand Mail Relay (ODMR, [RFC 2645]), the
// SMTP profile that lets a mail server without a fixed IP address collect
// the mail a provider holds for its domains, in both roles.
//
// The customer connects to the provider on port 366, says EHLO,
// authenticates with AUTH (CRAM-MD5 is mandatory, [RFC 2195]) and sends
// ATRN with the domains it wants. On a 250 reply the roles reverse on the
// same TCP connection: the customer sends an SMTP greeting and acts as the
// server, and the provider delivers the queued mail as an SMTP client.
//
//	customer                        provider
//	   | ---- connect (port 366) ------> |  initial state (RFC 2645 5.1)
//	   | <--- 220 greeting ------------- |
//	   | ---- EHLO --------------------> |  reply lists AUTH and ATRN
//	   | ---- AUTH CRAM-MD5 -----------> |
//	   | <--- 235 ---------------------- |  authenticated state (5.2)
//	   | ---- ATRN example.org --------> |
//	   | <--- 250 ---------------------- |  reversed state (5.3)
//	   | ---- 220 greeting ------------> |
//	   | <--- EHLO, MAIL, RCPT, BDAT --- |  the provider is now the client
//	   | <--- QUIT --------------------- |
//
// [Provider] serves the provider role over any [net.Conn]: it needs an
// [Authenticator], a [DomainAuthorizer] and a [QueueSource].
// Package [github.com/go-odmr/odmr/memqueue] is a ready queue for tests
// and small programs; package spool keeps mail on disk.
//
// [Customer] plays the other role: [Customer.Fetch] collects the mail and
// hands each message to a [MessageSink] (package maildir has one, and
// package smtpsink passes messages to a local SMTP or LMTP server), or
// hands the reversed connection to a [Handler] such as [Relay].
//
// The provider pipelines its commands (RFC 2920) to a customer that
// offers PIPELINING, and sends bodies with BDAT (RFC 3030) to one that also
// offers CHUNKING. Delivery status notification requests ([Envelope.DSN],
// RFC 3461) travel with each message. The customer stamps each message it
// receives with a Received: field, and tells its sink about the session
// ([ReversedSessionFromContext]).
//
// Replies travel as [*Error], which carries the reply code; the codes of
// RFC 2645 section 7 are sentinels such as [ErrNoMail] and [ErrATRNRefused]
// that [errors.Is] matches against replies read off the wire.
//
// Package odmrtest checks any provider or customer against the RFC, and
// package spool is a durable queue that several provider processes may
// share. Package odmrtrace ([Provider.Trace]) tells an embedder's metrics
// of each session's events, and package queueadmin is the operator's view
// of a queue (list, show, delete, bounce, hold, release) that the spool
// offers to queue tools. [Customer.Progress] reports a long fetch as it
// goes.
//
// After the swap the connection is an ordinary SMTP connection; [Reverse]
// wraps it as a [net.Conn] that replays any bytes read ahead, so any SMTP
// stack can take it over.
//
// [RFC 2645]: https://www.rfc-editor.org/rfc/rfc2645
// [RFC 2195]: https://www.rfc-editor.org/rfc/rfc2195
package odmr
