#!/usr/bin/env bash
# Runs its arguments inside a private network namespace that has only a loopback interface, so
# that the real BitTorrent programs started by the interop tests cannot reach anything beyond this
# machine even if one of their discovery switches (DHT, LSD, UPnP, NAT-PMP) was missed.
#
#   scripts/netns.sh cargo test --test interop_harness
#   scripts/netns.sh ./scripts/test.sh
#
# Needs root (or CAP_SYS_ADMIN) and util-linux's `unshare` plus iproute2's `ip`. When either is
# missing, or the namespace cannot be created (an unprivileged container), it prints a warning and
# runs the command directly: the tests still bind 127.0.0.1 only. Set HYPERBLOW_NETNS_REQUIRED=1 to
# make that an error instead.
#
# Inside, 127.0.0.1 works as usual (lo is brought up); every other address is unreachable
# ("Network is unreachable"), including the host's own non-loopback addresses. Note that cargo
# cannot download crates in there: build first (`cargo test --no-run`) or run offline.
set -euo pipefail

if [ "$#" -eq 0 ]; then
  echo "usage: $0 COMMAND [ARGS...]" >&2
  exit 2
fi

# fallback REASON COMMAND [ARGS...]
fallback() {
  local reason=$1
  shift
  if [ "${HYPERBLOW_NETNS_REQUIRED:-0}" = "1" ]; then
    echo "netns.sh: $reason, and HYPERBLOW_NETNS_REQUIRED=1" >&2
    exit 1
  fi
  echo "netns.sh: WARNING: $reason; running without a private network namespace" >&2
  exec "$@"
}

if [ "$(id -u)" != "0" ]; then
  fallback "not root" "$@"
fi
if ! command -v unshare >/dev/null 2>&1 || ! command -v ip >/dev/null 2>&1; then
  fallback "unshare or ip is not installed" "$@"
fi
# Probe once: some containers forbid new namespaces even to root.
if ! unshare --net -- true 2>/dev/null; then
  fallback "unshare --net is not permitted here" "$@"
fi

# The inner shell brings lo up, then replaces itself with the command (same PID, same exit code).
# HYPERBLOW_NETNS=1 tells tests they run isolated (tests/interop_harness.rs checks the isolation).
exec unshare --net -- sh -c 'ip link set lo up && HYPERBLOW_NETNS=1 exec "$@"' netns-sh "$@"
