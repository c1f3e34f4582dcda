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
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${HB_REAL_NO_BUILD:-0}" != "1" ]; then
  cargo build --release -p hyperblow-cli
fi
exec scripts/netns.sh /usr/bin/python3 scripts/bench_real.py "$@"
