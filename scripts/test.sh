#!/usr/bin/env bash
# The full test suite, exactly as the README's quick start and CI run it:
# formatting, lints (warnings are errors), then every test in the workspace.
#
# The tests run inside a private network namespace with only loopback (scripts/netns.sh) when this
# runs as root, so that no test, and no real BitTorrent program an interop test starts, can reach
# anything beyond this machine. Everything is built first, because cargo cannot fetch crates in there.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace --no-run
# In CI the namespace is required: a silent fallback would hide a lost isolation.
if [ -n "${CI:-}" ]; then export HYPERBLOW_NETNS_REQUIRED=1; fi
scripts/netns.sh cargo test --workspace --offline
