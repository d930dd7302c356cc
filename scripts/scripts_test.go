package scripts_test

import (
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/go-odmr/odmr/internal/progflags"
)

// scriptFlags returns the flags of the lines of script (continuations
// joined) that run bin/program, and for odmr-customer those of the
// script's deliver calls, which name the target.
func scriptFlags(t *testing.T, script, program string) []string {
	t.Helper()
	b, err := os.ReadFile(script)
	require.NoError(t, err)
	text := strings.ReplaceAll(string(b), "\\\n", " ")
	flag := regexp.MustCompile(`(?:^|\s)-([a-z][a-z0-9-]*)`)
	var flags []string
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		runs := strings.Contains(line, "bin/"+program+`"`) && !strings.HasPrefix(line, "#")
		if program == "odmr-customer" && regexp.MustCompile(`(^|\s)deliver -`).MatchString(line) {
			runs = true
		}
		if !runs {
			continue
		}
		for _, m := range flag.FindAllStringSubmatch(line, -1) {
			flags = append(flags, m[1])
		}
	}
	return flags
}

func TestMXDemoUsesRealFlags(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the programs")
	}
	for _, program := range []string{"odmr-provider", "odmr-customer"} {
		t.Run(program, func(t *testing.T) {
			defined := progflags.Defined(t, program)
			used := scriptFlags(t, "mx-demo", program)
			require.NotEmpty(t, used, "mx-demo does not run %s", program)
			t.Logf("%s: %v", program, used)
			for _, f := range used {
				assert.True(t, defined[f], "mx-demo gives %s the flag -%s, which it does not define", program, f)
			}
		})
	}
}

func TestScriptsParse(t *testing.T) {
	for _, script := range []string{"mx-demo", "stress-test"} {
		out, err := exec.Command("bash", "-n", script).CombinedOutput()
		assert.NoError(t, err, "%s: %s", script, out)
	}
	if _, err := exec.LookPath("shellcheck"); err != nil {
		t.Log("shellcheck is not installed; only bash -n was run")
		return
	}
	out, err := exec.Command("shellcheck", "mx-demo").CombinedOutput()
	assert.NoError(t, err, "shellcheck mx-demo:\n%s", out)
}
