#!/usr/bin/env bash
# Fuzzes the Stratum line decoder and request parsers for a set time (default 60 s). Not part of CI.
# Needs cargo-fuzz (installed here from crates.io if missing); sanitizers need nightly features, which
# RUSTC_BOOTSTRAP=1 enables on the stable toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
cd fuzz
RUSTC_BOOTSTRAP=1 cargo fuzz run stratum_lines -- -max_total_time="$seconds" -max_len=20000
