package scripts_test

import (
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/go-odmr/odmr/internal/progflags"
)

// runs reports whether line of a script runs bin/program, or, for
// odmr-customer, is one of the script's deliver calls, which name the
// target.
func runs(line, program string) bool {
	return strings.Contains(line, "bin/"+program+`"`) ||
		program == "odmr-customer" && deliverCall.MatchString(line)
}

var deliverCall = regexp.MustCompile(`(^|\s)deliver -`)

func TestMXDemoUsesRealFlags(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the programs")
	}
	for _, program := range []string{"odmr-provider", "odmr-customer"} {
		t.Run(program, func(t *testing.T) {
			used := progflags.Used(t, "mx-demo", func(line string) bool { return runs(line, program) })
			t.Logf("%s: %v", program, used)
			progflags.Check(t, "mx-demo", program, used)
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
