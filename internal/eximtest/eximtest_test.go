package eximtest

import (
	"slices"
	"testing"
)

// eml is a file of customer.conf's eml_file transport as Exim 4.99.1
// wrote it (seen in a run), with a folded Envelope-to: as Exim folds a
// long one.
const eml = "Return-path: <a@x.test>\r\n" +
	"Envelope-to: u@example.org,\r\n\tz@example.com\r\n" +
	"Delivery-date: Mon, 07 Dec 2026 06:34:37 +0000\r\n" +
	"Received: from [127.0.0.1] (port=33366 helo=provider.exim.test ident=root)\r\n" +
	"\tby customer.exim.test with esmtps  (TLS1.3) tls TLS_AES_256_GCM_SHA384\r\n" +
	"\t(Exim 4.99.1)\r\n" +
	"\tid 1xaSJ3-000000005Iz-0Fzb;\r\n" +
	"\tMon, 07 Dec 2026 06:34:37 +0000\r\n" +
	"From: a@x.test\r\n" +
	"Subject: t\r\n" +
	"\r\n" +
	".dot\r\n"

func TestParseFile(t *testing.T) {
	m, err := parseFile(eml)
	if err != nil {
		t.Fatal(err)
	}
	if m.From != "a@x.test" {
		t.Errorf("From = %q", m.From)
	}
	if want := []string{"u@example.org", "z@example.com"}; !slices.Equal(m.To, want) {
		t.Errorf("To = %q, want %q", m.To, want)
	}
	field, rest, ok := ReceivedField(m.Body)
	if !ok {
		t.Fatalf("the body does not start with Received:\n%s", m.Body)
	}
	if want := "From: a@x.test\r\nSubject: t\r\n\r\n.dot\r\n"; rest != want {
		t.Errorf("after Received: %q, want %q", rest, want)
	}
	if field[len(field)-len("+0000\r\n"):] != "+0000\r\n" {
		t.Errorf("Received: field %q does not end with its date", field)
	}

	for _, bad := range []string{
		"",
		"Envelope-to: u@example.org\r\n", // no Return-path:
		"Return-path: <a@x.test>\r\nDelivery-date: x\r\n", // no Envelope-to:
		"Return-path: <a@x.test>",                         // no CRLF
	} {
		if _, err := parseFile(bad); err == nil {
			t.Errorf("parseFile(%q) succeeded", bad)
		}
	}
}

func TestReceivedField(t *testing.T) {
	for _, body := range []string{"", "Subject: x\r\n\r\n", "Received: from x"} {
		if _, rest, ok := ReceivedField(body); ok || rest != body {
			t.Errorf("ReceivedField(%q) = %q, %v", body, rest, ok)
		}
	}
	field, rest, ok := ReceivedField("Received: from a\r\n\tby b; date\r\nSubject: x\r\n")
	if !ok || field != "Received: from a\r\n\tby b; date\r\n" || rest != "Subject: x\r\n" {
		t.Errorf("got %q, %q, %v", field, rest, ok)
	}
}

func TestReplies(t *testing.T) {
	log := "Connecting to 127.0.0.1 [127.0.0.1]:33366 ...\n" +
		"  SMTP<< 220 provider.exim.test ESMTP Exim 4.99.1\n" +
		"  SMTP>> EHLO customer.exim.test\n" +
		"  SMTP<< 250-provider.exim.test Hello\n" +
		"         250 HELP\n" +
		"  SMTP>> AUTH CRAM-MD5\n" +
		"  SMTP<< 334 PDIw\n" +
		"  SMTP>> ****\n" +
		"  SMTP<< 235 Authentication succeeded\n" +
		"  SMTP>> ATRN example.org\n" +
		"  SMTP<< 453 You have no mail\n"
	all, atrn := replies(log)
	if atrn != "453 You have no mail" {
		t.Errorf("ATRN reply %q", atrn)
	}
	if len(all) != 5 || all[3] != "235 Authentication succeeded" {
		t.Errorf("replies %q", all)
	}
	if _, atrn := replies("  SMTP>> AUTH CRAM-MD5\n  SMTP<< 535 Incorrect\n"); atrn != "" {
		t.Errorf("ATRN reply %q without ATRN", atrn)
	}
}

// TestOpenSkipsWithoutBuild: outside CI, a missing build skips the test.
// (Under CI it fails it, which a test cannot show without failing.)
func TestOpenSkipsWithoutBuild(t *testing.T) {
	t.Setenv("ODMR_EXIM_DIR", t.TempDir())
	t.Setenv("CI", "")
	var sub *testing.T
	t.Run("open", func(t *testing.T) {
		sub = t
		Open(t)
		t.Error("Open returned without a build")
	})
	if !sub.Skipped() {
		t.Error("the test was not skipped")
	}
}
