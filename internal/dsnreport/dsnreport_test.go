package dsnreport

import (
	"strings"
	"testing"

	"github.com/go-odmr/odmr"
)

// What the spool and pgqueue decide alike about a report: whether it
// returns the message whole, its BODY, and whether it needs SMTPUTF8.
func TestReportEnvelope(t *testing.T) {
	failed := []Recipient{{Addr: "u@a.example"}}
	relayed := []Recipient{{Addr: "u@a.example", Action: "relayed"}}
	for _, tc := range []struct {
		name  string
		ret   odmr.DSNReturn
		body  odmr.BodyType
		size  int64
		rcpts []Recipient
		want  bool
	}{
		{"FULL", odmr.ReturnFull, "", 10, failed, true},
		{"FULL, 8-bit", odmr.ReturnFull, odmr.Body8BitMIME, 10, failed, true},
		{"FULL, at the limit", odmr.ReturnFull, "", MaxReturnedMessage, failed, true},
		{"FULL, too large", odmr.ReturnFull, "", MaxReturnedMessage + 1, failed, false},
		{"FULL, binary", odmr.ReturnFull, odmr.BodyBinaryMIME, 10, failed, false},
		{"FULL, relayed", odmr.ReturnFull, "", 10, relayed, false},
		{"HDRS", odmr.ReturnHeaders, "", 10, failed, false},
		{"none", "", "", 10, failed, false},
	} {
		if got := ReturnsFull(tc.ret, tc.body, tc.size, tc.rcpts); got != tc.want {
			t.Errorf("%s: ReturnsFull = %v, want %v", tc.name, got, tc.want)
		}
	}

	for _, tc := range []struct {
		name     string
		r        Report
		body     odmr.BodyType
		smtputf8 bool
	}{
		{"ASCII", Report{Sender: "s@x.example", Rcpts: failed}, "", false},
		{"8-bit returned whole", Report{Sender: "s@x.example", Rcpts: failed, Full: strings.NewReader("é"), EightBit: true}, odmr.Body8BitMIME, false},
		{"8-bit flag without the message", Report{Sender: "s@x.example", Rcpts: failed, EightBit: true}, "", false},
		{"UTF-8 headers", Report{Sender: "s@x.example", Rcpts: failed, Headers: []byte("Subject: é\r\n")}, odmr.Body8BitMIME, false},
		{"UTF-8 sender", Report{Sender: "é@x.example", Rcpts: failed}, odmr.Body8BitMIME, true},
		{"UTF-8 recipient", Report{Sender: "s@x.example", Rcpts: []Recipient{{Addr: "é@a.example"}}}, odmr.Body8BitMIME, true},
		{"UTF-8 ORCPT only", Report{Sender: "s@x.example", Rcpts: []Recipient{{Addr: "u@a.example", ORcpt: "é@a.example"}}}, odmr.Body8BitMIME, false},
	} {
		if got := tc.r.BodyType(); got != tc.body {
			t.Errorf("%s: BodyType = %q, want %q", tc.name, got, tc.body)
		}
		if got := tc.r.UTF8(); got != tc.smtputf8 {
			t.Errorf("%s: UTF8 = %v, want %v", tc.name, got, tc.smtputf8)
		}
	}
}
