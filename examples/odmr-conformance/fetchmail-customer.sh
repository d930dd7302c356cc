#!/bin/sh
# fetchmail-customer.sh runs fetchmail once as an ODMR customer, for
# odmr-conformance -customer:
#
#   odmr-conformance -customer -user alice -secret-file alice.secret \
#       -domains example.org,example.com \
#       -exit-codes 0=ok,1=no-mail,3=auth-failed,8=try-later,128=auth-failed \
#       -customer-cmd 'sh fetchmail-customer.sh {host} {port} {user} {secret-file} {domains} {sink-host} {sink-port}'
#
# fetchmail takes its password only from an rc file, so this writes one
# (mode 0600) in a fresh FETCHMAILHOME, removed afterwards, and relays the
# reversed session to the checker's SMTP sink. Its exit status is
# fetchmail's; -exit-codes above says what each means (4 is any protocol
# error, a 450 included).
set -eu
[ $# -eq 7 ] || { echo "usage: $0 HOST PORT USER SECRET-FILE DOMAINS SINK-HOST SINK-PORT" >&2; exit 64; }
host=$1 port=$2 user=$3 secretfile=$4 domains=$5 sinkhost=$6 sinkport=$7
umask 077
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
secret=$(cat "$secretfile")
cat >"$dir/rc" <<RC
set no syslog
set no bouncemail
poll "$host" with protocol ODMR service $port timeout 30
    user "$user" password "$secret"
    fetchdomains $domains
    smtphost "$sinkhost/$sinkport"
RC
status=0
FETCHMAILHOME=$dir HOME=$dir ${FETCHMAIL:-fetchmail} -v -v --nodetach --nosyslog \
    -f "$dir/rc" --pidfile "$dir/pid" || status=$?
exit $status
