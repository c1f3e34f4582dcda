#!/usr/bin/env bash
# uTP throughput on loopback: 1 GiB, uTP only, libtorrent->libtorrent, libtorrent->Hyperblow and
# Hyperblow->Hyperblow in the same run, interleaved, medians of 5: MB/s and CPU-s per GiB per side,
# with the load (see scripts/bench_utp.py for the columns). Not part of CI.
#
#   scripts/bench_utp.sh                               # 1 GiB, 1 MiB pieces, 5 repeats, all pairs
#   scripts/bench_utp.sh --repeat 1 --size-mib 128     # a quick look
#   scripts/bench_utp.sh --pairs 'lt>lt'               # libtorrent only (no Hyperblow build)
#
# Builds the release binary first (skip with HB_UTP_NO_BUILD=1; without a binary that knows
# --transport only the libtorrent pair runs). Runs inside a loopback-only network namespace when it
# can (scripts/netns.sh), otherwise on 127.0.0.1 directly.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${HB_UTP_NO_BUILD:-0}" != "1" ]; then
  cargo build --release -p hyperblow-cli
fi
exec scripts/netns.sh /usr/bin/python3 scripts/bench_utp.py "$@"
