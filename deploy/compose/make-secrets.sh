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
echo "secrets written to $(pwd)/secrets"
