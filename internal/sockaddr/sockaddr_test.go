package sockaddr

import (
	"net"
	"net/netip"
	"testing"
)

func TestSplit(t *testing.T) {
	for _, tt := range []struct{ addr, network, address string }{
		{"127.0.0.1:25", "tcp", "127.0.0.1:25"},
		{"[::1]:24", "tcp", "[::1]:24"},
		{"/run/dovecot/lmtp", "unix", "/run/dovecot/lmtp"},
		{"unix:/run/lmtp", "unix", "/run/lmtp"},
		{"unix:relative", "unix", "relative"},
	} {
		n, a := Split(tt.addr)
		if n != tt.network || a != tt.address {
			t.Errorf("Split(%q) = %q, %q; want %q, %q", tt.addr, n, a, tt.network, tt.address)
		}
	}
}

func TestNetwork(t *testing.T) {
	for _, c := range []struct {
		addr   string
		v4, v6 int
		want   string
	}{
		{"192.0.2.7:366", 32, 64, "192.0.2.7/32"},
		{"192.0.2.7:366", 24, 64, "192.0.2.0/24"},
		// An IPv4-mapped address is the IPv4 address.
		{"[::ffff:192.0.2.7]:366", 24, 64, "192.0.2.0/24"},
		// The whole /64 of one site is one network.
		{"[2001:db8:1:2:aaaa::1]:366", 32, 64, "2001:db8:1:2::/64"},
		{"[2001:db8:1:2:aaaa::1]:366", 32, 48, "2001:db8:1::/48"},
		{"[fe80::1%eth0]:366", 32, 64, "fe80::/64"},
		// Out-of-range prefixes are clamped, not a panic.
		{"192.0.2.7:366", 99, 64, "192.0.2.7/32"},
		{"192.0.2.7:366", -1, 64, "0.0.0.0/0"},
	} {
		ap := netip.MustParseAddrPort(c.addr)
		if got := Network(net.TCPAddrFromAddrPort(ap), c.v4, c.v6); got != c.want {
			t.Errorf("%s: %q, want %q", c.addr, got, c.want)
		}
	}
	// Addresses that are not IP are their own key.
	server, conn := net.Pipe()
	defer server.Close()
	defer conn.Close()
	if got := Network(server.RemoteAddr(), 32, 64); got != "pipe" {
		t.Errorf("net.Pipe: %q, want \"pipe\"", got)
	}
	if got := Network(nil, 32, 64); got != "" {
		t.Errorf("nil: %q, want \"\"", got)
	}
}
