package spool

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"mime/multipart"
	"net/textproto"
	"strings"
	"time"

	"github.com/go-odmr/odmr"
	"github.com/go-odmr/odmr/internal/xtext"
)

// Delivery status notifications.
//
// A DSN is a multipart/report; report-type=delivery-status message (RFC
// 6522, RFC 3464): a human-readable text/plain part, a
// message/delivery-status part with one block of fields for the message
// and one per failed recipient, and the header section of the original
// message as text/rfc822-headers. When an address or the original headers
// are not ASCII, the RFC 6533 types message/global-delivery-status and
// message/global-headers take the place of the last two, with the address
// type "utf-8".

// maxReportedHeaders bounds the original header section copied into a
// DSN; longer sections are cut at a line boundary.
const maxReportedHeaders = 64 << 10

// maxReturnedMessage bounds the message a failure report returns whole
// when the sender asked for it with RET=FULL; a larger one is returned as
// its header section.
const maxReturnedMessage = 256 << 10

// report is the content of one DSN.
type report struct {
	id       string // the DSN's own ID
	hostname string
	sender   string // the original sender: the DSN's recipient
	msgID    string // the original message's spool ID
	envID    string // the original message's ENVID, decoded; "" if none
	arrival  time.Time
	date     time.Time
	rcpts    []reportRecipient
	headers  []byte    // the original header section
	full     io.Reader // the whole original message, to return instead of headers; nil if not
	eightBit bool      // full holds 8-bit text
}

type reportRecipient struct {
	addr        string
	action      string // "relayed"; "" for failed
	status      odmr.EnhancedCode
	diag        *odmr.Error // the SMTP reply that refused it, if any
	lastAttempt time.Time
	orcptType   string // ORCPT, decoded; "" if none
	orcpt       string
	expired     bool
	age         time.Duration // for expired: how long it was queued
}

func (rc reportRecipient) relayed() bool { return rc.action == "relayed" }

// statusFor returns the status of a recipient refused with e: its
// enhanced code when the class agrees with the reply, else the class of
// the reply with the detail unknown (RFC 3463: X.0.0).
func statusFor(e *odmr.Error) odmr.EnhancedCode {
	if e == nil {
		return odmr.EnhancedCode{5, 0, 0}
	}
	class := e.Code / 100
	if class != 4 && class != 5 {
		class = 5
	}
	if e.EnhancedCode[0] == class {
		return e.EnhancedCode
	}
	return odmr.EnhancedCode{class, 0, 0}
}

// global reports whether the report needs the RFC 6533 types.
func (r *report) global() bool {
	if !isASCII(r.sender) || !isASCII(string(r.headers)) {
		return true
	}
	for _, rc := range r.rcpts {
		if !isASCII(rc.addr) || !isASCII(rc.orcpt) {
			return true
		}
	}
	return false
}

// writeTo writes the DSN as an RFC 5322 message with CRLF line endings.
func (r *report) writeTo(w io.Writer) error {
	bw := bufio.NewWriter(w)
	mw := multipart.NewWriter(bw)
	global := r.global()
	host := cleanHost(r.hostname)

	h := func(name, value string) { fmt.Fprintf(bw, "%s: %s\r\n", name, value) }
	h("From", "Mail Delivery System <MAILER-DAEMON@"+host+">")
	h("To", "<"+clean(r.sender)+">")
	success := len(r.rcpts) > 0 && r.rcpts[0].relayed()
	if success {
		h("Subject", "Successful Mail Delivery Report")
	} else {
		h("Subject", "Undelivered Mail Returned to Sender")
	}
	h("Date", r.date.Format(time.RFC1123Z))
	h("Message-ID", "<"+r.id+"@"+host+">")
	h("Auto-Submitted", "auto-replied")
	h("MIME-Version", "1.0")
	h("Content-Type", "multipart/report; report-type=delivery-status;\r\n\tboundary=\""+mw.Boundary()+"\"")
	bw.WriteString("\r\nThis is a MIME-encapsulated message.\r\n\r\n")

	charset, statusType, headersType, addrType := "us-ascii", "message/delivery-status", "text/rfc822-headers", "rfc822"
	if global {
		charset, statusType, headersType, addrType = "utf-8", "message/global-delivery-status", "message/global-headers", "utf-8"
	}

	// The notification, for people.
	pw, err := mw.CreatePart(textproto.MIMEHeader{
		"Content-Type":        {"text/plain; charset=" + charset},
		"Content-Description": {"Notification"},
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(pw, "This is the mail system at host %s.\r\n\r\n", host)
	if success {
		pw.Write([]byte("Your message was relayed to the recipients below through a server that\r\n" +
			"does not send delivery status notifications: you will get no further\r\n" +
			"notification of its delivery from there.\r\n"))
	} else {
		pw.Write([]byte("Your message could not be delivered to one or more recipients.\r\n"))
	}
	switch {
	case r.full != nil:
		pw.Write([]byte("It is attached below.\r\n"))
	case len(r.headers) > 0:
		pw.Write([]byte("Its headers are attached below.\r\n"))
	}
	for _, rc := range r.rcpts {
		fmt.Fprintf(pw, "\r\n<%s>: %s\r\n", clean(rc.addr), rc.reason())
	}

	// The report, for programs.
	pw, err = mw.CreatePart(textproto.MIMEHeader{
		"Content-Type":        {statusType},
		"Content-Description": {"Delivery report"},
	})
	if err != nil {
		return err
	}
	// RFC 3464 section 2.2: Original-Envelope-Id, Reporting-MTA,
	// Arrival-Date, then extension fields.
	if r.envID != "" {
		fmt.Fprintf(pw, "Original-Envelope-Id: %s\r\n", clean(r.envID))
	}
	fmt.Fprintf(pw, "Reporting-MTA: dns; %s\r\n", host)
	fmt.Fprintf(pw, "Arrival-Date: %s\r\n", r.arrival.Format(time.RFC1123Z))
	fmt.Fprintf(pw, "X-ODMR-Queue-ID: %s\r\n", r.msgID)
	for _, rc := range r.rcpts {
		pw.Write([]byte("\r\n"))
		if rc.orcpt != "" && rc.orcptType != "" {
			orcpt := clean(rc.orcpt)
			if strings.EqualFold(rc.orcptType, "utf-8") {
				orcpt = xtext.UTF8Addr(rc.orcpt, global)
			}
			fmt.Fprintf(pw, "Original-Recipient: %s;%s\r\n", strings.ToLower(clean(rc.orcptType)), orcpt)
		}
		fmt.Fprintf(pw, "Final-Recipient: %s; %s\r\n", addrType, clean(rc.addr))
		action := rc.action
		if action == "" {
			action = "failed"
		}
		fmt.Fprintf(pw, "Action: %s\r\n", action)
		fmt.Fprintf(pw, "Status: %s\r\n", rc.status)
		if rc.diag != nil {
			fmt.Fprintf(pw, "Diagnostic-Code: smtp; %s\r\n", replyText(rc.diag))
		}
		if !rc.lastAttempt.IsZero() {
			fmt.Fprintf(pw, "Last-Attempt-Date: %s\r\n", rc.lastAttempt.Format(time.RFC1123Z))
		}
	}

	// The original message, or its headers.
	if r.full != nil {
		msgType, cte := "message/rfc822", "7bit"
		if global {
			msgType = "message/global"
		}
		if r.eightBit || global {
			cte = "8bit"
		}
		pw, err = mw.CreatePart(textproto.MIMEHeader{
			"Content-Type":              {msgType},
			"Content-Description":       {"Undelivered message"},
			"Content-Transfer-Encoding": {cte},
		})
		if err != nil {
			return err
		}
		if _, err := io.Copy(pw, r.full); err != nil {
			return err
		}
	} else if len(r.headers) > 0 {
		pw, err = mw.CreatePart(textproto.MIMEHeader{
			"Content-Type":        {headersType},
			"Content-Description": {"Undelivered message headers"},
		})
		if err != nil {
			return err
		}
		pw.Write(r.headers)
	}
	if err := mw.Close(); err != nil {
		return err
	}
	bw.WriteString("\r\n")
	return bw.Flush()
}

// reason explains a failure in words.
func (rc reportRecipient) reason() string {
	if rc.action == "relayed" {
		return "relayed to a server without delivery status notifications"
	}
	if rc.expired {
		s := fmt.Sprintf("delivery time expired: the message was queued for %v without being delivered", rc.age.Round(time.Minute))
		if rc.diag != nil {
			s += "; the last attempt was refused with: " + replyText(rc.diag)
		}
		return s
	}
	if rc.diag != nil {
		return "the receiving server refused it: " + replyText(rc.diag)
	}
	return "delivery failed permanently"
}

// replyText formats an SMTP reply as it appeared on the wire, on one line.
func replyText(e *odmr.Error) string {
	s := fmt.Sprint(e.Code)
	if ec := e.EnhancedCode.String(); ec != "" {
		s += " " + ec
	}
	if e.Message != "" {
		s += " " + e.Message
	}
	s = clean(s)
	if len(s) > 900 {
		s = s[:900]
	}
	return s
}

// clean replaces control characters, which could break a header or a
// field out of its line, with spaces.
func clean(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
}

// cleanHost returns h if it is a plausible host name, else "localhost".
func cleanHost(h string) string {
	if h == "" || len(h) > 253 {
		return "localhost"
	}
	for i := 0; i < len(h); i++ {
		c := h[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.') {
			return "localhost"
		}
	}
	return h
}

// readHeaderSection returns the header section of a message, up to the
// empty line that ends it and at most max bytes, cut at a line boundary.
// Every line ends in CRLF.
func readHeaderSection(r io.Reader, max int) ([]byte, error) {
	br := bufio.NewReader(io.LimitReader(r, int64(max)+1))
	var out bytes.Buffer
	for {
		line, err := br.ReadBytes('\n')
		if err != nil && err != io.EOF {
			return nil, err
		}
		complete := err == nil
		line = bytes.TrimRight(line, "\r\n")
		if len(line) == 0 || out.Len()+len(line)+2 > max {
			break
		}
		if !complete && out.Len()+len(line)+2 >= max {
			break // the limit may have cut this line
		}
		out.Write(line)
		out.WriteString("\r\n")
		if !complete {
			break
		}
	}
	return out.Bytes(), nil
}
