#!/bin/sh
# Container entrypoint: secrets arrive as files (Docker/Kubernetes secrets) and are exported
# only into the service's own environment, never baked into the image or the compose file.
#   /run/secrets/internal_token     → TUNEFLEET_INTERNAL_TOKEN (bearer token between services)
#   /run/secrets/postgres_password  → PGPASSWORD (libpq adds it to DATABASE_URL's connection)
set -eu
if [ -f /run/secrets/internal_token ]; then
  TUNEFLEET_INTERNAL_TOKEN="$(cat /run/secrets/internal_token)"
  export TUNEFLEET_INTERNAL_TOKEN
fi
if [ -f /run/secrets/postgres_password ]; then
  PGPASSWORD="$(cat /run/secrets/postgres_password)"
  export PGPASSWORD
fi
exec python -m "$@"
