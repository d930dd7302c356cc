// Package sockaddr handles socket addresses: those of the local servers
// that the customer's relay and package smtpsink reach ("host:port", or
// the path of a Unix domain socket), and the networks that the
// provider's limits per network count clients by.
package sockaddr

import (
	"net"
	"net/netip"
	"strings"
)

// Split separates a Unix socket path ("/path" or "unix:/path") from a TCP
// address, and returns the network to dial with it.
func Split(addr string) (network, address string) {
	if p, ok := strings.CutPrefix(addr, "unix:"); ok {
		return "unix", p
	}
	if strings.HasPrefix(addr, "/") {
		return "unix", addr
	}
	return "tcp", addr
}

// Network names the network addr belongs to, for limits per network: its
// IPv4 address masked to v4 bits or its IPv6 address to v6 bits, as a
// prefix ("192.0.2.0/24", "2001:db8::/64"), the bits clamped to the
// address's length. IPv4-mapped IPv6 addresses count as IPv4. An address
// that is not IP is its own key.
func Network(addr net.Addr, v4, v6 int) string {
	if addr == nil {
		return ""
	}
	var ip netip.Addr
	if ta, ok := addr.(*net.TCPAddr); ok {
		ip = ta.AddrPort().Addr()
	} else if ap, err := netip.ParseAddrPort(addr.String()); err == nil {
		ip = ap.Addr()
	} else if a, err := netip.ParseAddr(addr.String()); err == nil {
		ip = a
	}
	if !ip.IsValid() {
		return addr.String()
	}
	ip = ip.Unmap().WithZone("")
	bits := v6
	if ip.Is4() {
		bits = v4
	}
	// Prefix fails only for bits out of range, which the clamp rules out.
	pfx, _ := ip.Prefix(min(max(bits, 0), ip.BitLen()))
	return pfx.String()
}
