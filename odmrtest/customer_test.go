package odmrtest_test

import (
	"testing"

	"github.com/go-odmr/odmr/odmrtest"
)

// TestLibraryCustomer runs the customer suite against this library's
// customer over loopback TCP, with an in-memory sink.
func TestLibraryCustomer(t *testing.T) {
	odmrtest.TestCustomer(t, odmrtest.NewCustomer())
}
