package main

import (
	"fmt"
	"net"
	"strings"
	"time"
)

// receivedField is the trace field a relay must add (RFC 5321 section
// 4.4), in Postfix's layout:
//
//	Received: from HELO ([ADDRESS])
//		by HOSTNAME (odmr-provider) with ESMTP id ID
//		for <RCPT>; DATE
//
// "for" appears only with one recipient, so that a message to several
// does not tell each the others, and one short enough for a line; ESMTPS says TLS was used (RFC 3848),
// UTF8SMTP(S) that SMTPUTF8 was (RFC 6531).
//
// The field is at most maxReceivedField bytes long.
func receivedField(helo string, remote net.Addr, hostname, id string, tls, utf8 bool, rcpts []string, now time.Time) string {
	proto := "ESMTP"
	if utf8 {
		proto = "UTF8SMTP"
	}
	if tls {
		proto += "S"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "Received: from %s (%s)\r\n\tby %s (odmr-provider) with %s id %s",
		traceToken(helo), addressLiteral(remote), traceToken(hostname), proto, id)
	// A line of the field must stay within RFC 5322's 998 octets: a
	// recipient too long for that is left out, as with several.
	if len(rcpts) == 1 && !strings.ContainsAny(rcpts[0], "\r\n") && len(rcpts[0]) <= 900 {
		fmt.Fprintf(&b, "\r\n\tfor <%s>", rcpts[0])
	}
	fmt.Fprintf(&b, ";\r\n\t%s\r\n", now.Format(time.RFC1123Z))
	return b.String()
}

// maxReceivedField bounds the length of what receivedField returns: three
// names of at most 255 bytes (HELO, a non-IP address, the hostname), a
// recipient of at most 900, a 28-byte ID, a date and some 100 bytes of
// fixed text come to under 1,800. A queue that limits the size of what
// it stores (pgqueue's MaxMessageBytes) must allow this much over the
// intake's -max-message-size, which counts the data alone.
const maxReceivedField = 2048

// traceToken keeps a name the client chose from breaking the field: only
// the characters of a domain or an address literal pass; others become
// '?', and an empty name "unknown".
func traceToken(s string) string {
	if s == "" {
		return "unknown"
	}
	if len(s) > 255 {
		s = s[:255]
	}
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', strings.ContainsRune(".-_:[]", r):
			return r
		}
		return '?'
	}, s)
}

// addressLiteral is the client's address as RFC 5321 section 4.1.3
// writes it: [192.0.2.1] or [IPv6:2001:db8::1].
func addressLiteral(a net.Addr) string {
	host, _, err := net.SplitHostPort(a.String())
	if err != nil {
		host = a.String()
	}
	ip := net.ParseIP(host)
	switch {
	case ip == nil:
		return "[" + traceToken(host) + "]"
	case ip.To4() != nil:
		return "[" + ip.To4().String() + "]"
	}
	return "[IPv6:" + ip.String() + "]"
}
