#!/usr/bin/env bash
# Provides a headless Chromium for the test that renders `kaizen report` and screenshots it. As root with apt-get it
# installs Debian's package; otherwise it says what to do, and that test skips with the same line. Idempotent:
# nothing happens when a Chromium is there.
set -euo pipefail

log() { printf 'setup-chromium: %s\n' "$*" >&2; }
found() { command -v chromium >/dev/null || command -v chromium-browser >/dev/null; }

if found; then
  log "Chromium is installed"
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  log "installing Debian's chromium package"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
  found || { log "apt-get installed chromium but no chromium command was found"; exit 1; }
else
  log "Chromium is missing, so the report's rendering test will skip:" \
    "install it (sudo apt-get install chromium) and run \`make setup\` again"
fi
