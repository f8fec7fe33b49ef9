#!/usr/bin/env bash
# Runs every test of the workspace (unit, property, integration, real-process), the ledger's against
# both SQLite and a throwaway PostgreSQL (installed from Debian's packages if missing, started on
# 127.0.0.1, stopped at the end). This is the command README.md gives and .ci/run calls.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/postgres.sh
source scripts/postgres.sh
if [ -z "${CLOUDMINE_TEST_DATABASE_URL:-}" ]; then
    pg_start
    trap pg_stop EXIT
fi
export CLOUDMINE_REQUIRE_POSTGRES=1
cargo test --workspace --all-targets --locked "$@"
