#!/usr/bin/env bash
# The agent's D-Bus tests run a real dbus-daemon (Debian package dbus).
# Installs it when missing and this is root on a Debian machine; otherwise
# says what to install.
set -euo pipefail
command -v dbus-daemon >/dev/null 2>&1 && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing dbus (dbus-daemon) for the D-Bus tests" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dbus >/dev/null
  exit 0
fi
echo "dbus-daemon is missing: install the dbus package (e.g. apt-get install dbus)" >&2
exit 1
