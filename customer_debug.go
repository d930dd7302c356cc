package odmr

import (
	"fmt"
	"sync"
)

// redacted stands in the customer's log and debug transcript for what
// the SASL exchange carries.
const redacted = "<redacted>"

// customerDebugMu serializes the lines of every customer's debug
// transcript, so that concurrent fetches writing to one Debug writer
// never mix their lines.
var customerDebugMu sync.Mutex

// debug writes one line of the transcript, if there is one. The caller
// has redacted it.
func (s *customerSession) debug(prefix, line string) {
	if s.c.Debug == nil {
		return
	}
	customerDebugMu.Lock()
	defer customerDebugMu.Unlock()
	fmt.Fprintf(s.c.Debug, "%s %s%s\n", s.addr, prefix, line)
}
