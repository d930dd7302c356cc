package pgtest

import "syscall"

// setDeathSignal has the server shut down (fast) when the test binary dies
// without stopping it, killed or timed out.
func setDeathSignal(a *syscall.SysProcAttr) { a.Pdeathsig = syscall.SIGINT }
