#!/usr/bin/env bash
# The full test suite, exactly as the README's quick start and CI run it:
# formatting, lints (warnings are errors), then every test in the workspace.
#
# The tests run inside a private network namespace with only loopback (scripts/netns.sh) when this
# runs as root, so that no test, and no real BitTorrent program an interop test starts, can reach
# anything beyond this machine. Everything is built first, because cargo cannot fetch crates in there.
set -euo pipefail
cd "$(dirname "$0")/.."

# The Debian packages the interop tests run (the list .ci/run installs, read from there so there is
# one list): installed when missing and this machine can (apt-get, as root or with password-less
# sudo); otherwise say what to install. HYPERBLOW_SKIP_INTEROP=1 skips this with those tests.
if [ -z "${HYPERBLOW_SKIP_INTEROP:-}" ] && command -v apt-get >/dev/null 2>&1 \
  && command -v dpkg-query >/dev/null 2>&1; then
  missing=()
  for p in $(sed -n '/apt-get install/,/[^\\]$/p' .ci/run | tr -d '\\' | tr ' ' '\n' |
    grep -E '^[a-z0-9][a-z0-9.+-]+$' | grep -vxE 'apt-get|install'); do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    sudo=()
    [ "$(id -u)" = 0 ] || sudo=(sudo -n)
    if [ "${#sudo[@]}" -eq 0 ] || sudo -n true 2>/dev/null; then
      echo "test.sh: installing ${missing[*]}"
      "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
      "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
    else
      echo "test.sh: missing Debian packages: ${missing[*]} (install them as root, or set" \
        "HYPERBLOW_SKIP_INTEROP=1 to skip the interop tests)" >&2
    fi
  fi
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace --no-run
# In CI the namespace is required: a silent fallback would hide a lost isolation.
if [ -n "${CI:-}" ]; then export HYPERBLOW_NETNS_REQUIRED=1; fi
scripts/netns.sh cargo test --workspace --offline
