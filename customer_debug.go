package odmr

import (
	"fmt"
	"sync"

	"github.com/go-odmr/odmr/internal/termsafe"
)

// redacted stands in the customer's log and debug transcript for what
// the SASL exchange carries.
const redacted = "<redacted>"

// customerDebugMu serializes the lines of every customer's debug
// transcript, so that concurrent fetches writing to one Debug writer
// never mix their lines.
var customerDebugMu sync.Mutex

// debug writes one line of the transcript, if there is one. The caller
// has redacted it; what the peer sent is escaped (package termsafe).
func (s *customerSession) debug(prefix, line string) {
	if s.c.Debug == nil {
		return
	}
	customerDebugMu.Lock()
	defer customerDebugMu.Unlock()
	fmt.Fprintf(s.c.Debug, "%s %s%s\n", s.addr, prefix, termsafe.Escape(line))
}
