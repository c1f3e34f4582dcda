#!/usr/bin/env bash
# LEDBAT on a real shared bottleneck (issue 16): network namespaces joined by veth pairs, the
# A -> B direction shaped by tbf in a router namespace between them (default 20 Mbit/s with a queue of up to 200 ms), one uTP flow and
# one TCP flow across it at the same time. Reports each flow's rate and share of the bottleneck, and
# the queueing delay (RTT of small UDP probes during each phase minus the idle RTT); see
# scripts/ledbat.py for the phases. Not part of CI: needs root (namespaces, tc) and takes ~3 minutes.
#
#   scripts/ledbat.sh                       # libtorrent's uTP against libtorrent's TCP
#   scripts/ledbat.sh --utp hb              # Hyperblow's uTP (target/release/hyperblow) against it
#   RATE=50mbit LATENCY=300ms scripts/ledbat.sh --seconds 20
#
# Only the namespaces and the veth pair this script creates are touched (named after its PID); they
# are deleted on exit, whatever the exit. Build the release binary first for --utp hb
# (cargo build --release -p hyperblow-cli).
set -euo pipefail
cd "$(dirname "$0")/.."

RATE=${RATE:-20mbit}
LATENCY=${LATENCY:-200ms}
BURST=${BURST:-16kb}
NS_A="hb-ledbat-a-$$"
NS_R="hb-ledbat-r-$$"
NS_B="hb-ledbat-b-$$"
ADDR_A=10.201.77.1
ADDR_B=10.201.78.2

if [ "$(id -u)" != 0 ]; then
  echo "ledbat.sh: needs root (network namespaces and tc)" >&2
  exit 1
fi

cleanup() {
  # Deleting a namespace deletes its veth ends (and their peers) and the tbf on them.
  for ns in "$NS_A" "$NS_R" "$NS_B"; do ip netns del "$ns" 2>/dev/null || true; done
}
trap cleanup EXIT INT TERM

# A (seeders) -- R (router: the bottleneck) -- B (leechers). The tbf sits in R, not on the
# senders' own interface: there, Linux's TCP Small Queues would hold each TCP socket's share of the
# qdisc to about a millisecond of data (backpressure that no real bottleneck gives), while a UDP
# socket's is bounded only by its send buffer, and the comparison would be unfair to TCP.
for ns in "$NS_A" "$NS_R" "$NS_B"; do
  ip netns add "$ns"
  ip -n "$ns" link set lo up
done
ip link add "hbla$$" netns "$NS_A" type veth peer name "hblra$$" netns "$NS_R"
ip link add "hblb$$" netns "$NS_B" type veth peer name "hblrb$$" netns "$NS_R"
ip -n "$NS_A" addr add "$ADDR_A/24" dev "hbla$$"
ip -n "$NS_R" addr add 10.201.77.254/24 dev "hblra$$"
ip -n "$NS_R" addr add 10.201.78.254/24 dev "hblrb$$"
ip -n "$NS_B" addr add "$ADDR_B/24" dev "hblb$$"
# up NS DEV: brings DEV up, without segmentation offloads where ethtool exists (64 KiB
# super-packets would pass tbf in bursts).
up() {
  ip -n "$1" link set "$2" up
  if command -v ethtool >/dev/null; then
    ip netns exec "$1" ethtool -K "$2" tso off gso off gro off >/dev/null 2>&1 || true
  fi
}
up "$NS_A" "hbla$$"
up "$NS_R" "hblra$$"
up "$NS_R" "hblrb$$"
up "$NS_B" "hblb$$"
ip -n "$NS_A" route add default via 10.201.77.254
ip -n "$NS_B" route add default via 10.201.78.254
ip netns exec "$NS_R" sysctl -q -w net.ipv4.ip_forward=1
# The bottleneck: R's egress towards B (the seeders' data), a token bucket with a queue of up to
# LATENCY.
ip netns exec "$NS_R" tc qdisc add dev "hblrb$$" root tbf rate "$RATE" burst "$BURST" latency "$LATENCY"

ip netns exec "$NS_A" /usr/bin/python3 scripts/ledbat.py --ns-b "$NS_B" --addr-a "$ADDR_A" \
  --addr-b "$ADDR_B" --rate "$RATE" --latency "$LATENCY" "$@"
ip netns exec "$NS_R" tc -s qdisc show dev "hblrb$$"
