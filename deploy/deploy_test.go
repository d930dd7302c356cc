package deploy_test

import (
	"strings"
	"testing"

	"github.com/go-odmr/odmr/internal/progflags"
)

// runs reports whether line of a unit file or Containerfile runs
// program: an ExecStart= line, or the CMD of the provider's image.
func runs(line, program string) bool {
	return strings.HasPrefix(line, "ExecStart=") && strings.Contains(line, "/"+program) ||
		strings.HasPrefix(line, "CMD ") && program == "odmr-provider"
}

func TestServiceFilesUseRealFlags(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the programs")
	}
	for _, tc := range []struct{ program, file string }{
		{"odmr-provider", "systemd/odmr-provider.service"},
		{"odmr-provider", "Containerfile"},
		{"odmr-customer", "systemd/odmr-customer.service"},
		{"odmr-customer", "systemd/odmr-customer-fetch.service"},
	} {
		t.Run(tc.file, func(t *testing.T) {
			used := progflags.Used(t, tc.file, func(line string) bool { return runs(line, tc.program) })
			progflags.Check(t, tc.file, tc.program, used)
		})
	}
}
