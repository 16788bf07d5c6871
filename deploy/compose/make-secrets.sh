#!/bin/sh
# Make the secret files docker-compose.yml reads, with random passwords.
set -eu
cd "$(dirname "$0")"
mkdir -p secrets
umask 077
rabbit=$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')
postgres=$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')
printf '%s\n' "$postgres" > secrets/postgres_password
printf 'postgresql://txplatform:%s@postgres:5432/txplatform\n' "$postgres" > secrets/db_url
printf 'amqp://txplatform:%s@rabbitmq:5672/\n' "$rabbit" > secrets/bus_url
printf 'default_user = txplatform\ndefault_pass = %s\nloopback_users = none\n' "$rabbit" > secrets/rabbitmq.conf
echo "secrets written to $(pwd)/secrets"
