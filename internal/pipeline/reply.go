package pipeline

import "github.com/go-odmr/odmr/internal/wire"

// replyLimits bound what the reply reader accepts from the server.
var replyLimits = wire.ReplyLimits{
	// Longer than RFC 5321's 512 octets, and than the 2000 of smtpsink's
	// client.
	Line: 4096,
	// So that a server cannot make the client hold an endless reply in
	// memory.
	Lines: 256,
}

// Reply is one SMTP reply, read with package wire's codec.
type Reply = wire.Reply
