// Package dsnreport writes delivery status notifications (RFC 3464):
// the reports the spool and pgqueue send to the sender of a message that
// failed, expired, or was relayed where no further DSN will come from.
//
// A DSN is a multipart/report; report-type=delivery-status message (RFC
// 6522, RFC 3464): a human-readable text/plain part, a
// message/delivery-status part with one block of fields for the message
// and one per failed recipient, and the header section of the original
// message as text/rfc822-headers. When an address or the original headers
// are not ASCII, the RFC 6533 types message/global-delivery-status and
// message/global-headers take the place of the last two, with the address
// type "utf-8".
package dsnreport

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
	"github.com/go-odmr/odmr/internal/ascii"
	"github.com/go-odmr/odmr/internal/xtext"
)

// MaxReportedHeaders bounds the original header section copied into a
// DSN; longer sections are cut at a line boundary.
const MaxReportedHeaders = 64 << 10

// MaxReturnedMessage bounds the message a failure report returns whole
// when the sender asked for it with RET=FULL; a larger one is returned as
// its header section.
const MaxReturnedMessage = 256 << 10

// Report is the content of one DSN.
type Report struct {
	ID       string // the DSN's own ID
	Hostname string
	Sender   string // the original sender: the DSN's recipient
	MsgID    string // the original message's queue ID
	EnvID    string // the original message's ENVID, decoded; "" if none
	Arrival  time.Time
	Date     time.Time
	Rcpts    []Recipient
	Headers  []byte    // the original header section
	Full     io.Reader // the whole original message, to return instead of headers; nil if not
	EightBit bool      // Full holds 8-bit text
}

// Recipient is the report on one recipient.
type Recipient struct {
	Addr        string
	Action      string // "relayed"; "" for failed
	Status      odmr.EnhancedCode
	Diag        *odmr.Error // the SMTP reply that refused it, if any
	LastAttempt time.Time
	ORcptType   string // ORCPT, decoded; "" if none
	ORcpt       string
	Expired     bool
	Age         time.Duration // for expired: how long it was queued
	Cancelled   bool          // returned by the operator, undelivered
}

// Relayed reports whether rc says relayed rather than failed.
func (rc Recipient) Relayed() bool { return rc.Action == "relayed" }

// StatusFor returns the status of a recipient refused with e: its
// enhanced code when the class agrees with the reply, else the class of
// the reply with the detail unknown (RFC 3463: X.0.0).
func StatusFor(e *odmr.Error) odmr.EnhancedCode {
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

// Global reports whether the report needs the RFC 6533 types.
func (r *Report) Global() bool {
	if !ascii.Is(r.Sender) || !ascii.Is(string(r.Headers)) {
		return true
	}
	for _, rc := range r.Rcpts {
		if !ascii.Is(rc.Addr) || !ascii.Is(rc.ORcpt) {
			return true
		}
	}
	return false
}

// ReturnsFull reports whether the report of rcpts on a message sent with
// RET=ret, of body type body and size bytes, returns the message whole.
// RET=FULL asks a failure report for the whole message (RFC 3461 section
// 4.3); up to MaxReturnedMessage it gets it, and headers only beyond, as
// other MTAs do. A BINARYMIME body is never returned whole.
func ReturnsFull(ret odmr.DSNReturn, body odmr.BodyType, size int64, rcpts []Recipient) bool {
	return ret == odmr.ReturnFull && !rcpts[0].Relayed() && body != odmr.BodyBinaryMIME && size <= MaxReturnedMessage
}

// BodyType is the BODY the report is sent with: 8BITMIME when it uses
// the RFC 6533 types or returns an 8-bit message whole, 7BIT ("")
// otherwise.
func (r *Report) BodyType() odmr.BodyType {
	if r.Global() || (r.Full != nil && r.EightBit) {
		return odmr.Body8BitMIME
	}
	return ""
}

// UTF8 reports whether sending the report needs SMTPUTF8: its recipient,
// the original sender, or an address it reports on is not ASCII.
func (r *Report) UTF8() bool {
	if !ascii.Is(r.Sender) {
		return true
	}
	for _, rc := range r.Rcpts {
		if !ascii.Is(rc.Addr) {
			return true
		}
	}
	return false
}

// Encode writes the DSN as an RFC 5322 message with CRLF line endings:
// a multipart/report of a notification for people, the report for
// programs, and the original message or its headers.
func (r *Report) Encode(w io.Writer) error {
	bw := bufio.NewWriter(w)
	mw := multipart.NewWriter(bw)
	r.writeHeader(bw, mw.Boundary())
	if err := r.writeNotification(mw); err != nil {
		return err
	}
	if err := r.writeStatus(mw); err != nil {
		return err
	}
	if err := r.writeOriginal(mw); err != nil {
		return err
	}
	if err := mw.Close(); err != nil {
		return err
	}
	bw.WriteString("\r\n")
	return bw.Flush()
}

// success reports whether the DSN reports relayed recipients rather than
// failed ones.
func (r *Report) success() bool { return len(r.Rcpts) > 0 && r.Rcpts[0].Relayed() }

// writeHeader writes the header section of the DSN, and the preamble of
// its multipart body.
func (r *Report) writeHeader(bw *bufio.Writer, boundary string) {
	host := cleanHost(r.Hostname)
	h := func(name, value string) { fmt.Fprintf(bw, "%s: %s\r\n", name, value) }
	h("From", "Mail Delivery System <MAILER-DAEMON@"+host+">")
	h("To", "<"+clean(r.Sender)+">")
	if r.success() {
		h("Subject", "Successful Mail Delivery Report")
	} else {
		h("Subject", "Undelivered Mail Returned to Sender")
	}
	h("Date", r.Date.Format(time.RFC1123Z))
	h("Message-ID", "<"+r.ID+"@"+host+">")
	h("Auto-Submitted", "auto-replied")
	h("MIME-Version", "1.0")
	h("Content-Type", "multipart/report; report-type=delivery-status;\r\n\tboundary=\""+boundary+"\"")
	bw.WriteString("\r\nThis is a MIME-encapsulated message.\r\n\r\n")
}

// writeNotification writes the part for people.
func (r *Report) writeNotification(mw *multipart.Writer) error {
	charset := "us-ascii"
	if r.Global() {
		charset = "utf-8"
	}
	pw, err := mw.CreatePart(textproto.MIMEHeader{
		"Content-Type":        {"text/plain; charset=" + charset},
		"Content-Description": {"Notification"},
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(pw, "This is the mail system at host %s.\r\n\r\n", cleanHost(r.Hostname))
	if r.success() {
		pw.Write([]byte("Your message was relayed to the recipients below through a server that\r\n" +
			"does not send delivery status notifications: you will get no further\r\n" +
			"notification of its delivery from there.\r\n"))
	} else {
		pw.Write([]byte("Your message could not be delivered to one or more recipients.\r\n"))
	}
	switch {
	case r.Full != nil:
		pw.Write([]byte("It is attached below.\r\n"))
	case len(r.Headers) > 0:
		pw.Write([]byte("Its headers are attached below.\r\n"))
	}
	for _, rc := range r.Rcpts {
		fmt.Fprintf(pw, "\r\n<%s>: %s\r\n", clean(rc.Addr), rc.reason())
	}
	return nil
}

// writeStatus writes the part for programs: the delivery status (RFC
// 3464, or RFC 6533 when global).
func (r *Report) writeStatus(mw *multipart.Writer) error {
	global := r.Global()
	statusType, addrType := "message/delivery-status", "rfc822"
	if global {
		statusType, addrType = "message/global-delivery-status", "utf-8"
	}
	pw, err := mw.CreatePart(textproto.MIMEHeader{
		"Content-Type":        {statusType},
		"Content-Description": {"Delivery report"},
	})
	if err != nil {
		return err
	}
	// RFC 3464 section 2.2: Original-Envelope-Id, Reporting-MTA,
	// Arrival-Date, then extension fields.
	if r.EnvID != "" {
		fmt.Fprintf(pw, "Original-Envelope-Id: %s\r\n", clean(r.EnvID))
	}
	fmt.Fprintf(pw, "Reporting-MTA: dns; %s\r\n", cleanHost(r.Hostname))
	fmt.Fprintf(pw, "Arrival-Date: %s\r\n", r.Arrival.Format(time.RFC1123Z))
	fmt.Fprintf(pw, "X-ODMR-Queue-ID: %s\r\n", r.MsgID)
	for _, rc := range r.Rcpts {
		pw.Write([]byte("\r\n"))
		if rc.ORcpt != "" && rc.ORcptType != "" {
			orcpt := clean(rc.ORcpt)
			if strings.EqualFold(rc.ORcptType, "utf-8") {
				orcpt = xtext.UTF8Addr(rc.ORcpt, global)
			}
			fmt.Fprintf(pw, "Original-Recipient: %s;%s\r\n", strings.ToLower(clean(rc.ORcptType)), orcpt)
		}
		fmt.Fprintf(pw, "Final-Recipient: %s; %s\r\n", addrType, clean(rc.Addr))
		action := rc.Action
		if action == "" {
			action = "failed"
		}
		fmt.Fprintf(pw, "Action: %s\r\n", action)
		fmt.Fprintf(pw, "Status: %s\r\n", rc.Status)
		if rc.Diag != nil {
			fmt.Fprintf(pw, "Diagnostic-Code: smtp; %s\r\n", replyText(rc.Diag))
		}
		if !rc.LastAttempt.IsZero() {
			fmt.Fprintf(pw, "Last-Attempt-Date: %s\r\n", rc.LastAttempt.Format(time.RFC1123Z))
		}
	}
	return nil
}

// writeOriginal writes the original message, or its headers, if the
// report has them.
func (r *Report) writeOriginal(mw *multipart.Writer) error {
	global := r.Global()
	if r.Full != nil {
		msgType, cte := "message/rfc822", "7bit"
		if global {
			msgType = "message/global"
		}
		if r.EightBit || global {
			cte = "8bit"
		}
		pw, err := mw.CreatePart(textproto.MIMEHeader{
			"Content-Type":              {msgType},
			"Content-Description":       {"Undelivered message"},
			"Content-Transfer-Encoding": {cte},
		})
		if err != nil {
			return err
		}
		_, err = io.Copy(pw, r.Full)
		return err
	}
	if len(r.Headers) == 0 {
		return nil
	}
	headersType := "text/rfc822-headers"
	if global {
		headersType = "message/global-headers"
	}
	pw, err := mw.CreatePart(textproto.MIMEHeader{
		"Content-Type":        {headersType},
		"Content-Description": {"Undelivered message headers"},
	})
	if err != nil {
		return err
	}
	pw.Write(r.Headers)
	return nil
}

// reason explains a failure in words.
func (rc Recipient) reason() string {
	if rc.Action == "relayed" {
		return "relayed to a server without delivery status notifications"
	}
	if rc.Cancelled {
		s := "the mail system's administrator returned the message without delivering it"
		if rc.Diag != nil {
			s += "; the last attempt was refused with: " + replyText(rc.Diag)
		}
		return s
	}
	if rc.Expired {
		s := fmt.Sprintf("delivery time expired: the message was queued for %v without being delivered", rc.Age.Round(time.Minute))
		if rc.Diag != nil {
			s += "; the last attempt was refused with: " + replyText(rc.Diag)
		}
		return s
	}
	if rc.Diag != nil {
		return "the receiving server refused it: " + replyText(rc.Diag)
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

// ReadHeaderSection returns the header section of a message, up to the
// empty line that ends it and at most max bytes, cut at a line boundary.
// Every line ends in CRLF.
func ReadHeaderSection(r io.Reader, max int) ([]byte, error) {
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
