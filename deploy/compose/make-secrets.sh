#!/bin/sh
# Make the secret files docker-compose.yml reads, with random passwords.
# Run again, it keeps what it made: PostgreSQL and RabbitMQ keep the
# passwords they were first started with in their volumes, so new ones
# would lock the platform out. It only makes the files that are missing.
set -eu
cd "$(dirname "$0")"
if [ "$(id -u)" != 0 ]; then
    echo "make-secrets.sh: run it as root (sudo): the files go to the containers' users" >&2
    exit 1
fi
mkdir -p secrets
umask 077
password() {
    python3 -c 'import secrets; print(secrets.token_urlsafe(24))'
}
# Each password is read back from the file the server reads it from, if
# that is there; the URLs are written from it when missing.
if [ -e secrets/postgres_password ]; then
    postgres=$(head -n 1 secrets/postgres_password)
else
    postgres=$(password)
    printf '%s\n' "$postgres" > secrets/postgres_password
fi
if [ -e secrets/rabbitmq.conf ]; then
    rabbit=$(sed -n 's/^default_pass = //p' secrets/rabbitmq.conf)
else
    rabbit=$(password)
    printf 'default_user = txplatform\ndefault_pass = %s\nloopback_users = none\n' "$rabbit" \
        > secrets/rabbitmq.conf
fi
[ -e secrets/db_url ] ||
    printf 'postgresql://txplatform:%s@postgres:5432/txplatform\n' "$postgres" > secrets/db_url
[ -e secrets/bus_url ] ||
    printf 'amqp://txplatform:%s@rabbitmq:5672/\n' "$rabbit" > secrets/bus_url
# Key files, as `txplatform-keys init` makes them (that command needs the
# package; this needs only Python). Never overwritten: losing a key file
# loses the data encrypted with it.
for name in bus account post notify; do
    [ -e "secrets/${name}_keys.json" ] && continue
    python3 - "$name" > "secrets/${name}_keys.json" <<'EOF'
import base64, json, secrets, sys
name = sys.argv[1]
print(json.dumps({
    "format": "txplatform-keys/1", "name": name, "period": 3600, "max_skew": 60,
    "max_age": 604800 if name == "bus" else None, "min_decrypt_version": 1,
    "versions": [{"version": 1, "activates_at": 0,
                  "secret": base64.b64encode(secrets.token_bytes(32)).decode()}],
}, indent=2))
EOF
done
# Compose mounts these files as they are (mode 0600): each must belong to the
# user reading it in its container. txplatform's image runs as uid 10001
# (Dockerfile); the postgres and rabbitmq images read theirs as uid 999.
chown 10001:10001 secrets/bus_url secrets/db_url secrets/*_keys.json
chown 999:999 secrets/postgres_password secrets/rabbitmq.conf
echo "secrets in $(pwd)/secrets (those there already kept)"
