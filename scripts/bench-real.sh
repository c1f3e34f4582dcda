#!/usr/bin/env bash
# Hyperblow against real peers (libtorrent), downloading and seeding 1 GiB over loopback: medians of
# 5 interleaved runs per client (see scripts/bench_real.py for the columns). Not part of CI.
#
#   scripts/bench-real.sh                       # 1 GiB, 1 MiB pieces, 5 repeats, both phases
#   scripts/bench-real.sh --piece-kib 16        # the 16 KiB-piece variant (65,536 pieces)
#   scripts/bench-real.sh --repeat 1 --size-mib 256 --phases download   # a quick look
#   scripts/bench-real.sh --hb before=/tmp/hb-old --hb after=target/release/hyperblow  # compare builds
#
# Builds the release binary first (skip with HB_REAL_NO_BUILD=1). Runs inside a loopback-only network
# namespace when it can (scripts/netns.sh), otherwise on 127.0.0.1 directly.
#
# The bench and every peer it starts run at niceness HB_REAL_NICE (default -10, which needs root; as
# another user, or with HB_REAL_NICE=0, they run at the normal priority): on a machine shared with
# builds the figures then depend much less on what else runs. The build itself keeps the caller's
# priority.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${HB_REAL_NO_BUILD:-0}" != "1" ]; then
  cargo build --release -p hyperblow-cli
fi
nice_level=${HB_REAL_NICE:--10}
prio=()
if [ "$nice_level" != "0" ] && nice -n "$nice_level" true 2>/dev/null; then
  prio=(nice -n "$nice_level")
elif [ "$nice_level" != "0" ]; then
  echo "bench-real.sh: cannot run at niceness $nice_level (not root?); running at normal priority" >&2
fi
exec "${prio[@]}" scripts/netns.sh /usr/bin/python3 scripts/bench_real.py "$@"
