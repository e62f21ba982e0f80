#!/usr/bin/env bash
# System packages the test suite needs (Debian): PostgreSQL for the real-Postgres tests.
# Idempotent and quick when everything is present.
set -euo pipefail
need=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "system_deps: please install: ${need[*]} (apt-get install ${need[*]})" >&2
    exit 1
  fi
  echo "system_deps: installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
