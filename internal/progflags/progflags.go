// Package progflags tells which flags the module's programs define, for
// the tests that check the files giving them flags (systemd units, the
// container image, scripts) against the programs themselves.
package progflags

import (
	"bufio"
	"bytes"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
)

// defined keeps the flags of each program built so far in this test
// binary: a test that checks several files against one program builds
// it once.
var (
	mu      sync.Mutex
	defined = map[string]map[string]bool{}
)

// Defined builds examples/name of this module and returns the flags its
// -h lists. It fails the test when the program does not build or lists
// none. A program is built once per test binary; each call gets its own
// copy of the map.
func Defined(t testing.TB, name string) map[string]bool {
	t.Helper()
	mu.Lock()
	defer mu.Unlock()
	if flags, ok := defined[name]; ok {
		return maps.Clone(flags)
	}
	bin := filepath.Join(t.TempDir(), name)
	out, err := exec.Command("go", "build", "-o", bin, "github.com/go-odmr/odmr/examples/"+name).CombinedOutput()
	if err != nil {
		t.Fatalf("building %s: %v\n%s", name, err, out)
	}
	var help bytes.Buffer
	cmd := exec.Command(bin, "-h")
	cmd.Stdout, cmd.Stderr = &help, &help
	_ = cmd.Run() // -h may exit 0 or 2, depending on the program
	flags := map[string]bool{}
	re := regexp.MustCompile(`^\s+-([a-z0-9][a-z0-9-]*)\b`)
	sc := bufio.NewScanner(&help)
	for sc.Scan() {
		if m := re.FindStringSubmatch(sc.Text()); m != nil {
			flags[m[1]] = true
		}
	}
	if len(flags) == 0 {
		t.Fatalf("no flags in %s -h:\n%s", name, help.String())
	}
	defined[name] = flags
	return maps.Clone(flags)
}

// usedFlag is a flag on a command line: after a space or a quote (a
// JSON array's element).
var usedFlag = regexp.MustCompile(`(?:^|[\s"])-([a-z][a-z0-9-]*)`)

// Used returns the flags on the lines of the file at path that runs
// picks, with continuation lines ("\" at the end) joined and comment
// lines ("#") left out.
func Used(t testing.TB, path string, runs func(line string) bool) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	text := strings.ReplaceAll(string(b), "\\\n", " ")
	var flags []string
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if strings.HasPrefix(line, "#") || !runs(line) {
			continue
		}
		for _, m := range usedFlag.FindAllStringSubmatch(line, -1) {
			flags = append(flags, m[1])
		}
	}
	return flags
}

// Check fails t unless file gives program at least one flag, and only
// flags that program defines.
func Check(t *testing.T, file, program string, used []string) {
	t.Helper()
	if len(used) == 0 {
		t.Fatalf("no command line for %s in %s", program, file)
	}
	defined := Defined(t, program)
	for _, f := range used {
		if !defined[f] {
			t.Errorf("%s gives %s the flag -%s, which it does not define", file, program, f)
		}
	}
}
