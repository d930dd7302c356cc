package deploy_test

import (
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/go-odmr/odmr/internal/progflags"
)

// commandFlags returns the flags of every command line in a unit file or
// Containerfile that runs program: ExecStart= lines (with their
// continuations) and the JSON-array CMD of a Containerfile.
func commandFlags(t *testing.T, path, program string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	text := strings.ReplaceAll(string(b), "\\\n", " ")
	var flags []string
	flag := regexp.MustCompile(`(?:^|[\s"])-([a-z][a-z0-9-]*)`)
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if strings.HasPrefix(line, "#") {
			continue
		}
		isCmd := strings.HasPrefix(line, "ExecStart=") && strings.Contains(line, "/"+program) ||
			strings.HasPrefix(line, "CMD ") && program == "odmr-provider"
		if !isCmd {
			continue
		}
		for _, m := range flag.FindAllStringSubmatch(line, -1) {
			flags = append(flags, m[1])
		}
	}
	return flags
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
			defined := progflags.Defined(t, tc.program)
			used := commandFlags(t, tc.file, tc.program)
			require.NotEmpty(t, used, "no command line for %s in %s", tc.program, tc.file)
			for _, f := range used {
				assert.True(t, defined[f], "%s gives %s the flag -%s, which it does not define", tc.file, tc.program, f)
			}
		})
	}
}
