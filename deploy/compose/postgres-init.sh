#!/bin/sh
# One database per SQL owner (registry, training, gateway), created on the first start.
set -eu
for db in $(echo "$POSTGRES_MULTIPLE_DATABASES" | tr ',' ' '); do
  psql -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -c "CREATE DATABASE $db OWNER $POSTGRES_USER"
done
