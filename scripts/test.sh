#!/usr/bin/env bash
# The full test suite, exactly as the README's quick start and CI run it:
# formatting, lints (warnings are errors), then every test in the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
