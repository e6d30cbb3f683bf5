#!/usr/bin/env bash
# The browser tests: the real server's pages driven in Debian's chromium
# (through playwright-core, with the system browser: no browser download).
#
#   bash tests/browser/run.sh                 # build, install, run every story
#   bash tests/browser/run.sh --screenshots   # the same, and save docs/screenshots/*.png
#
# It builds `concert-server` (debug; CONCERT_RELEASE=1 for --release),
# installs chromium with apt-get when it is missing (as root), runs `npm ci`
# here, then `node --test`. Each test file starts its own server on a free
# loopback port with a temp SQLite database, a known admin key and fast
# queue ticks, and stops it at the end.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
cd "$ROOT"

if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "== installing chromium (apt-get)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "needs /usr/bin/chromium: sudo apt-get install -y chromium chromium-driver" >&2
    exit 1
  fi
fi

if [ "${CONCERT_RELEASE:-}" = 1 ]; then
  cargo build --release --bin concert-server
  export CONCERT_BIN="$ROOT/target/release/concert-server"
else
  cargo build --bin concert-server
  export CONCERT_BIN="$ROOT/target/debug/concert-server"
fi

if [ "${1:-}" = "--screenshots" ]; then
  export SCREENSHOT_DIR="$ROOT/docs/screenshots"
  mkdir -p "$SCREENSHOT_DIR"
fi

cd "$HERE"
npm ci --no-audit --no-fund --loglevel=error
npm test
