#!/usr/bin/env bash
# System packages the test suite needs (Debian): PostgreSQL for the real-Postgres tests,
# Chromium for the console's browser tests (Playwright drives /usr/bin/chromium: no browser
# download), and prometheus for promtool (deploy/ rules and config checks).
# Idempotent and quick when everything is present.
set -euo pipefail
need=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "system_deps: please install: ${need[*]} (apt-get install ${need[*]})" >&2
    exit 1
  fi
  echo "system_deps: installing ${need[*]}"
  apt-get update -qq
  # --no-install-recommends: prometheus would otherwise pull a node exporter and friends.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
