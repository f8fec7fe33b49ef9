#!/usr/bin/env bash
# Runs every test of the workspace (unit, property, integration, real-process). This is the command
# README.md gives and .ci/run calls.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --all-targets --locked "$@"
