#!/usr/bin/env bash
# Installs Debian's Chromium for the dashboard's browser test (tests/it/dashboard.rs), once.
# apt checks every package against the archive's signed Release file, so the download is pinned
# by the archive's keys; the version is whatever this Debian release currently ships (printed).
# Set CAIRN_CHROMIUM to use another Chromium binary instead (nothing is installed then).
set -euo pipefail
if [ -n "${CAIRN_CHROMIUM:-}" ]; then
  [ -x "$CAIRN_CHROMIUM" ] || { echo "setup-browser: CAIRN_CHROMIUM=$CAIRN_CHROMIUM is not an executable" >&2; exit 1; }
  exit 0
fi
if [ ! -x /usr/bin/chromium ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  command -v apt-get >/dev/null || { echo "setup-browser: no apt-get: install Chromium and set CAIRN_CHROMIUM" >&2; exit 1; }
  echo "setup-browser: installing Debian's chromium (for the dashboard's browser test)" >&2
  if ! { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium; } >&2; then
    echo "setup-browser: apt-get could not install chromium (its reason above)" >&2
    exit 1
  fi
fi
echo "setup-browser: $(/usr/bin/chromium --version 2>/dev/null | head -1)" >&2
