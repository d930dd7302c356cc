#!/bin/sh
# exim-customer.sh runs Exim 4.99's customer ("exim -atrn") once, for
# odmr-conformance -customer, delivering what it collects to the
# checker's SMTP sink:
#
#   odmr-conformance -customer -user alice -secret-file alice.secret \
#       -domains example.org,example.com -refused-recipient none \
#       -customer-cmd 'sh exim-customer.sh {host} {port} {user} {secret-file} {domains} {sink-host} {sink-port}'
#
# It runs as root against the Exim build of ../shared/peers/exim/build.sh
# (ODMR_EXIM_DIR, default /tmp/exim), whose customer.conf queues what
# arrives and delivers it to files. This writes a copy of customer.conf
# with a router first in line that sends every message received to
# SINK-HOST:SINK-PORT by SMTP (Exim takes -C from root whatever the
# file), runs "exim -atrn" in clear text with it, then delivers the queue
# in the foreground (-qff), so what arrived is at the sink when it exits.
# Exim takes every recipient and bounces a refusal later, hence
# -refused-recipient none. Only one Exim customer may run at a time (the
# build has one spool); the Go tests hold eximtest's lock.
#
# Exim exits 0 whatever the ATRN's reply, so the status is read off its
# -v dialogue and given as odmr-customer's (the checker's default
# -exit-codes): 0 mail received, 1 no mail (453), 3 AUTH or ATRN refused
# for want of authentication (535, 530), 4 ATRN refused (450), 8 try
# later (451), 2 any other failure, 124 the timeout (TIMEOUT, seconds,
# default 60).
set -u
[ $# -eq 7 ] || { echo "usage: $0 HOST PORT USER SECRET-FILE DOMAINS SINK-HOST SINK-PORT" >&2; exit 64; }
host=$1 port=$2 user=$3 secretfile=$4 domains=$5 sinkhost=$6 sinkport=$7
EXDIR=${ODMR_EXIM_DIR:-/tmp/exim}
[ -r "$EXDIR/env.sh" ] || { echo "$0: no Exim build in $EXDIR (../shared/peers/exim/build.sh)" >&2; exit 2; }
# shellcheck source=/dev/null # env.sh is the build's
. "$EXDIR/env.sh"
case $sinkhost in *[!A-Za-z0-9.:-]*|'') echo "$0: bad sink host $sinkhost" >&2; exit 64;; esac
case $sinkport in *[!0-9]*|'') echo "$0: bad sink port $sinkport" >&2; exit 64;; esac
case $port in *[!0-9]*|'') echo "$0: bad port $port" >&2; exit 64;; esac

dir=$(mktemp -d) || exit 2
trap 'rm -rf "$dir"' EXIT
chmod 0755 "$dir"
# The copy of customer.conf: the sink's router before to_files, its
# transport first among the transports.
awk -v host="$sinkhost" -v port="$sinkport" '
/^to_files:/ {
	print "to_sink:"
	print "  driver = manualroute"
	print "  route_data = <;" host
	print "  transport = sink_smtp"
	print "  self = send"
	print ""
}
{ print }
/^begin transports/ {
	print ""
	print "sink_smtp:"
	print "  driver = smtp"
	print "  port = " port
	print "  allow_localhost"
	print "  hosts_avoid_tls = *"
	print ""
}' "$CCONF" >"$dir/customer.conf" || exit 2
chmod 0644 "$dir/customer.conf"
if ! grep -q '^to_sink:' "$dir/customer.conf" || ! grep -q '^sink_smtp:' "$dir/customer.conf"; then
	echo "$0: $CCONF has no to_files router or transports section to route to the sink" >&2
	exit 2
fi

# The credentials, as run-customer.sh writes them: an lsearch file that
# only Exim's user reads.
q() { printf '"%s"' "$(printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g')"; }
(umask 077; printf '*: user=%s secret=%s\n' "$(q "$user")" "$(q "$(cat "$secretfile")")" >"$dir/creds") || exit 2
chown "$EXIM_USER" "$dir/creds"

args="-C $dir/customer.conf -DODMR_PORT=$port -DNO_TLS -DOUTDIR=$dir -DCREDS=$dir/creds"
rc=0
# shellcheck disable=SC2086 # args holds no spaces
timeout "${TIMEOUT:-60}" "$EXIM" $args -v -atrn "$host" "$domains" </dev/null 2>"$dir/log" || rc=$?
rm -f "$dir/creds" # only the ATRN client reads it
cat "$dir/log" >&2
# Deliver what arrived to the sink, now.
# shellcheck disable=SC2086
"$EXIM" $args -qff </dev/null >&2 2>&1

# The reply to ATRN: the first "SMTP<< " line after "SMTP>> ATRN".
reply=$(sed -n '/SMTP>> ATRN/,${/SMTP<< /{s/.*SMTP<< //p;q;}}' "$dir/log")
[ $rc = 124 ] && exit 124
case $rc:$reply in
0:453*) exit 1 ;;
*:450*) exit 4 ;;
*:451*) exit 8 ;;
*:530*) exit 3 ;;
0:4* | 0:5*) exit 2 ;;
0:*) exit 0 ;;
esac
grep -q 'SMTP<< 535' "$dir/log" && exit 3
exit 2
