#!/usr/bin/env bash
# Start bgwsol's MLflow tracking server: PostgreSQL for runs, the model registry and users,
# artifacts proxied to object storage (S3, or MinIO through MLFLOW_S3_ENDPOINT_URL), and
# basic authentication on (`--app-name basic-auth`).
#
# Checks its environment first and stops with one line per problem. Secrets stay in the
# environment: the admin password reaches MLflow as MLFLOW_AUTH_ADMIN_PASSWORD (used only the
# first time the server starts against an empty user store), the database password as
# PGPASSWORD (libpq reads it when the URIs carry none). basic_auth.ini, generated into a
# private temporary directory, then holds no secret (a password written inside
# MLFLOW_AUTH_DATABASE_URI would end up in it, mode 0600).
#
#   infra/mlflow/start.sh            # check, then exec mlflow server
#   infra/mlflow/start.sh --check    # check only, print the server command (no secrets), exit
#
# Required:
#   MLFLOW_BACKEND_STORE_URI        postgresql+psycopg2://USER@HOST:5432/mlflow
#   MLFLOW_AUTH_DATABASE_URI        postgresql+psycopg2://USER@HOST:5432/mlflow_auth (a database of its own)
#   PGPASSWORD                      the database password (or put it in the URIs)
#   MLFLOW_ARTIFACTS_DESTINATION    s3://bucket/prefix (where the server puts artifacts)
#   MLFLOW_AUTH_ADMIN_PASSWORD      12+ characters
#   MLFLOW_FLASK_SERVER_SECRET_KEY  random string, the same on every replica (CSRF protection)
# Optional:
#   MLFLOW_AUTH_ADMIN_USERNAME      default admin
#   MLFLOW_AUTH_DEFAULT_PERMISSION  READ (default), EDIT, MANAGE or NO_PERMISSIONS: what every
#                                   user may do with experiments/models they did not create
#   MLFLOW_S3_ENDPOINT_URL          MinIO endpoint, e.g. http://minio:9000 (unset: AWS S3)
#   AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_REGION   (unset: the instance's IAM role)
#   MLFLOW_HOST (default 0.0.0.0), MLFLOW_PORT (5000), MLFLOW_WORKERS (2)
#   MLFLOW_SERVER_ALLOWED_HOSTS     extra Host headers to accept (default: localhost and private
#                                   IPs); e.g. mlflow.bgwsol.svc.cluster.local:5000 on Kubernetes
set -euo pipefail

check_only=false
case "${1:-}" in
    --check) check_only=true ;;
    "") ;;
    *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

problems=()
need() {  # need VAR "what it is"
    if [ -z "${!1:-}" ]; then
        problems+=("$1 is not set: $2")
    fi
}
need MLFLOW_BACKEND_STORE_URI "the tracking database, postgresql+psycopg2://USER@HOST:5432/mlflow"
need MLFLOW_AUTH_DATABASE_URI "the user database, postgresql+psycopg2://USER@HOST:5432/mlflow_auth"
need MLFLOW_ARTIFACTS_DESTINATION "where artifacts go, s3://bucket/prefix"
need MLFLOW_AUTH_ADMIN_PASSWORD "the admin password (12+ characters; never commit it)"
need MLFLOW_FLASK_SERVER_SECRET_KEY "a random secret for CSRF protection, e.g. \$(openssl rand -hex 32)"

if [ -n "${MLFLOW_AUTH_ADMIN_PASSWORD:-}" ] && [ "${#MLFLOW_AUTH_ADMIN_PASSWORD}" -lt 12 ]; then
    problems+=("MLFLOW_AUTH_ADMIN_PASSWORD is too short: MLflow requires 12+ characters")
fi
case "${MLFLOW_BACKEND_STORE_URI:-postgresql}" in
    postgresql*|mysql*|sqlite:*) ;;
    *) problems+=("MLFLOW_BACKEND_STORE_URI must be a database URI (postgresql+psycopg2://...), not ${MLFLOW_BACKEND_STORE_URI%%://*}://...") ;;
esac
case "${MLFLOW_ARTIFACTS_DESTINATION:-s3://}" in
    s3://?*|s3://) ;;
    /*|file://*) echo "start.sh: warning: artifacts on a local path ($MLFLOW_ARTIFACTS_DESTINATION); the cluster's runs need s3://" >&2 ;;
    *) problems+=("MLFLOW_ARTIFACTS_DESTINATION must be s3://bucket/prefix (or a local path for a test), got $MLFLOW_ARTIFACTS_DESTINATION") ;;
esac
permission="${MLFLOW_AUTH_DEFAULT_PERMISSION:-READ}"
case "$permission" in
    READ|EDIT|MANAGE|NO_PERMISSIONS) ;;
    *) problems+=("MLFLOW_AUTH_DEFAULT_PERMISSION must be READ, EDIT, MANAGE or NO_PERMISSIONS, got $permission") ;;
esac
if ! command -v mlflow >/dev/null 2>&1; then
    problems+=("the mlflow command is not on PATH (pip install 'mlflow[auth]==3.17.2' psycopg2-binary boto3)")
else
    # the interpreter behind the mlflow command: basic-auth needs Flask-WTF (the mlflow[auth]
    # extra, not in bgwsol's lock), PostgreSQL needs psycopg2, S3 artifacts need boto3
    read -r -a shebang < <(head -n 1 "$(command -v mlflow)" | sed -n 's/^#!//p')
    py="${shebang[0]:-}"
    if [ "${py##*/}" = env ] && [ -n "${shebang[1]:-}" ]; then
        py=$(command -v "${shebang[1]}" || true)
    fi
    modules="flask_wtf boto3"
    case "${MLFLOW_BACKEND_STORE_URI:-}${MLFLOW_AUTH_DATABASE_URI:-}" in *postgresql*) modules="$modules psycopg2" ;; esac
    if [ -x "${py:-}" ]; then
        for m in $modules; do
            if ! "$py" -c "import $m" 2>/dev/null; then
                problems+=("python module $m is missing next to mlflow ($py): pip install 'mlflow[auth]==3.17.2' psycopg2-binary boto3")
            fi
        done
    fi
fi

if [ "${#problems[@]}" -gt 0 ]; then
    for p in "${problems[@]}"; do
        echo "start.sh: $p" >&2
    done
    exit 2
fi

# Empty values would reach boto3 as an empty endpoint or empty keys: drop them instead.
for var in MLFLOW_S3_ENDPOINT_URL AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN AWS_REGION \
           MLFLOW_SERVER_ALLOWED_HOSTS; do
    if [ -z "${!var:-}" ]; then
        unset "$var"
    fi
done

# basic_auth.ini: the auth store and permissions; credentials stay in the environment.
auth_dir=$(mktemp -d)
chmod 700 "$auth_dir"
cat > "$auth_dir/basic_auth.ini" <<EOF
[mlflow]
default_permission = $permission
database_uri = $MLFLOW_AUTH_DATABASE_URI
admin_username = ${MLFLOW_AUTH_ADMIN_USERNAME:-admin}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
EOF
chmod 600 "$auth_dir/basic_auth.ini"
export MLFLOW_AUTH_CONFIG_PATH="$auth_dir/basic_auth.ini"
export MLFLOW_AUTH_ADMIN_USERNAME="${MLFLOW_AUTH_ADMIN_USERNAME:-admin}"
# the job runner needs extra setup and is not used by bgwsol
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"

cmd=(mlflow server
     --app-name basic-auth
     --backend-store-uri "$MLFLOW_BACKEND_STORE_URI"
     --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION"
     --serve-artifacts
     --host "${MLFLOW_HOST:-0.0.0.0}"
     --port "${MLFLOW_PORT:-5000}"
     --workers "${MLFLOW_WORKERS:-2}")

if $check_only; then
    # database URIs carry passwords: print them without the user:password part
    redact() { sed -E 's#(://)[^@/]*@#\1***@#'; }
    echo "start.sh: environment OK; would run:"
    printf ' %q' "${cmd[@]}" | redact
    echo
    echo "  with MLFLOW_AUTH_CONFIG_PATH=$MLFLOW_AUTH_CONFIG_PATH:"
    redact < "$MLFLOW_AUTH_CONFIG_PATH" | sed 's/^/    /'
    rm -rf "$auth_dir"
    exit 0
fi

echo "start.sh: MLflow tracking server with basic auth on ${MLFLOW_HOST:-0.0.0.0}:${MLFLOW_PORT:-5000}, artifacts in $MLFLOW_ARTIFACTS_DESTINATION" >&2
exec "${cmd[@]}"
