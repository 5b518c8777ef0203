#!/usr/bin/env bash
# Provides the tools two tests drive: headless Chromium (it renders `kaizen report` and screenshots it) and tmux (it
# runs `kaizen get -w` in a terminal). As root with apt-get it installs Debian's packages; otherwise it says what to
# do, and those tests skip with the same line. Idempotent: nothing happens when both are there.
set -euo pipefail

log() { printf 'setup-test-tools: %s\n' "$*" >&2; }
has_chromium() { command -v chromium >/dev/null || command -v chromium-browser >/dev/null; }

packages=()
has_chromium || packages+=(chromium fonts-dejavu-core)
command -v tmux >/dev/null || packages+=(tmux)

if [ ${#packages[@]} -eq 0 ]; then
  log "Chromium and tmux are installed"
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  log "installing Debian's ${packages[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
  has_chromium || { log "apt-get installed chromium but no chromium command was found"; exit 1; }
else
  log "${packages[*]} missing, so the report's rendering test or the live \`kaizen get\` test will skip:" \
    "install them (sudo apt-get install ${packages[*]}) and run \`make setup\` again"
fi
