#!/usr/bin/env bash
# Provides PostgreSQL's server binaries for the collector's PostgreSQL tests and benchmark (kaizen.dev.postgres runs
# a throwaway server from them). As root with apt-get it installs Debian's package; otherwise it says what to do,
# and those tests skip with the same line. Idempotent: nothing happens when the binaries are there.
set -euo pipefail

log() { printf 'setup-postgres: %s\n' "$*" >&2; }
# Where kaizen.dev.postgres.find_bin_dir looks: Debian's /usr/lib/postgresql/<major>/bin, or initdb on PATH.
found() { compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || command -v initdb >/dev/null; }

if found; then
  log "PostgreSQL's server binaries are installed"
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  log "installing Debian's postgresql package"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
  found || { log "apt-get installed postgresql but no initdb was found" ; exit 1; }
else
  log "PostgreSQL's server binaries are missing, so the collector's PostgreSQL tests will skip:" \
    "install them (sudo apt-get install postgresql, or put initdb on PATH) and run \`make setup\` again"
fi
