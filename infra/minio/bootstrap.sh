#!/bin/sh
# Create bgwsol's buckets on a MinIO server; idempotent (existing buckets and users are kept).
#
# Runs as the one-shot `bootstrap` service of infra/minio/compose.yaml, or by hand with MinIO's
# client `mc` on PATH:
#   MINIO_URL=http://127.0.0.1:9000 MINIO_ROOT_USER=... MINIO_ROOT_PASSWORD=... sh infra/minio/bootstrap.sh
#
# Environment:
#   MINIO_URL             S3 endpoint of the server (default http://127.0.0.1:9000)
#   MINIO_ROOT_USER       root credentials (required)
#   MINIO_ROOT_PASSWORD
#   BGWSOL_BUCKETS        space-separated bucket names (default: bgwsol-data bgwsol-runs bgwsol-mlflow:
#                         shards, Ray Train/Tune checkpoints, MLflow artifacts)
#   BGWSOL_S3_ACCESS_KEY  optional: create this user with read/write on those buckets only
#   BGWSOL_S3_SECRET_KEY  (8+ characters), for the cluster and the MLflow server instead of root
# POSIX sh on purpose: the mc image has no bash guarantee.
set -eu

MINIO_URL="${MINIO_URL:-http://127.0.0.1:9000}"
BUCKETS="${BGWSOL_BUCKETS:-bgwsol-data bgwsol-runs bgwsol-mlflow}"
ALIAS=bgwsol

die() { echo "bootstrap: $*" >&2; exit 1; }

[ -n "${MINIO_ROOT_USER:-}" ] || die "MINIO_ROOT_USER is not set"
[ -n "${MINIO_ROOT_PASSWORD:-}" ] || die "MINIO_ROOT_PASSWORD is not set"
command -v mc >/dev/null 2>&1 || die "MinIO client 'mc' not found on PATH"

# The server may still be starting: retry for about a minute.
tries=0
until mc alias set "$ALIAS" "$MINIO_URL" "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null 2>&1; do
    tries=$((tries + 1))
    [ "$tries" -lt 30 ] || die "cannot log in to $MINIO_URL as $MINIO_ROOT_USER (server down or wrong credentials)"
    sleep 2
done

for bucket in $BUCKETS; do
    mc mb --ignore-existing "$ALIAS/$bucket"
done

if [ -n "${BGWSOL_S3_ACCESS_KEY:-}" ]; then
    [ -n "${BGWSOL_S3_SECRET_KEY:-}" ] || die "BGWSOL_S3_ACCESS_KEY is set but BGWSOL_S3_SECRET_KEY is not"
    policy=$(mktemp)
    trap 'rm -f "$policy"' EXIT
    resources=""
    for bucket in $BUCKETS; do
        resources="$resources\"arn:aws:s3:::$bucket\",\"arn:aws:s3:::$bucket/*\","
    done
    resources="${resources%,}"
    printf '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["s3:*"],"Resource":[%s]}]}\n' \
        "$resources" > "$policy"
    mc admin policy create "$ALIAS" bgwsol-readwrite "$policy"
    mc admin user add "$ALIAS" "$BGWSOL_S3_ACCESS_KEY" "$BGWSOL_S3_SECRET_KEY"
    mc admin policy attach "$ALIAS" bgwsol-readwrite --user "$BGWSOL_S3_ACCESS_KEY" 2>/dev/null \
        || echo "bootstrap: policy bgwsol-readwrite already attached to $BGWSOL_S3_ACCESS_KEY"
fi

echo "bootstrap: buckets on $MINIO_URL:"
mc ls "$ALIAS"
