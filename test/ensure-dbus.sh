#!/usr/bin/env bash
# The agent's D-Bus tests run a real dbus-daemon (Debian package dbus), and
# test/deploy's polkit rule test a real polkitd (package polkitd). Installs
# them when missing and this is root on a Debian machine; otherwise says what
# to install.
set -euo pipefail
missing=()
command -v dbus-daemon >/dev/null 2>&1 || missing+=(dbus)
{ [ -x /usr/lib/polkit-1/polkitd ] && command -v pkcheck >/dev/null 2>&1; } || missing+=(polkitd)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing ${missing[*]} for the D-Bus and polkit tests" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  exit 0
fi
echo "missing for the D-Bus and polkit tests: install the packages ${missing[*]} (e.g. apt-get install ${missing[*]})" >&2
exit 1
