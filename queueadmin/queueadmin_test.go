package queueadmin

import (
	"errors"
	"testing"
)

// TestBusy: the error names the message once and says what to do, and
// matches ErrBusy; wrapping ErrBusy with %w used to say "odmr: message"
// twice.
func TestBusy(t *testing.T) {
	err := Busy("42", "try again later")
	if !errors.Is(err, ErrBusy) {
		t.Errorf("Busy does not match ErrBusy")
	}
	if got, want := err.Error(), "odmr: message 42 is being delivered; try again later"; got != want {
		t.Errorf("Busy: %q, want %q", got, want)
	}
	if got, want := Busy("7", "").Error(), "odmr: message 7 is being delivered"; got != want {
		t.Errorf("Busy without a hint: %q, want %q", got, want)
	}
}
