#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ for a while (default 30 s each, as CI does).
#
#   scripts/fuzz.sh                 # every target, 30 s each
#   scripts/fuzz.sh 600             # every target, 10 minutes each (the longer local run)
#   scripts/fuzz.sh 600 peer_session wire_decoder
#
# Installs cargo-fuzz when it is missing. Uses the nightly toolchain (with AddressSanitizer) when rustup
# has one; otherwise stable with `--sanitizer none` (cargo-fuzz 0.13 then passes only stable rustc
# flags, so no RUSTC_BOOTSTRAP is needed; libFuzzer's coverage guidance works the same, only memory
# errors would go unseen, and the workspace forbids unsafe code anyway). Each run starts from the committed seeds (fuzz/seeds/<target>) and grows a
# local corpus in fuzz/corpus/<target> (git-ignored). A crash, timeout (10 s for one input) or
# out-of-memory (2 GiB) fails the script; the input that caused it is left in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-30}"
shift || true

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi

toolchain=()
sanitizer=()
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  toolchain=(+nightly)
else
  sanitizer=(--sanitizer none)
fi

if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo "${toolchain[@]}" fuzz list)
fi

# One build for every target (the runs below then only start the binaries).
cargo "${toolchain[@]}" fuzz build "${sanitizer[@]}"

for t in "${targets[@]}"; do
  echo "fuzz: $t for ${secs}s"
  mkdir -p "fuzz/corpus/$t"
  log="$(mktemp)"
  rc=0
  cargo "${toolchain[@]}" fuzz run "${sanitizer[@]}" "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1 || rc=$?
  grep -E '^stat::(number_of_executed_units|peak_rss_mb)|^#[0-9]+ +DONE' "$log" || true
  if [ "$rc" -ne 0 ]; then
    tail -n 60 "$log" >&2
    rm -f "$log"
    echo "fuzz: $t FAILED (the input is in fuzz/artifacts/$t/)" >&2
    exit 1
  fi
  rm -f "$log"
done
echo "fuzz: all ${#targets[@]} targets ran ${secs}s without a finding"
