#!/usr/bin/python3
"""uTP (BEP 29) throughput on loopback: 1 GiB between libtorrent and Hyperblow, uTP only, medians of N.

Run it through scripts/bench_utp.sh (which builds the release binary first when Hyperblow takes part).
Not part of CI. Reuses scripts/bench_real.py (its process sampling, payload cache in
target/bench-real/, per-run columns and table); every peer runs with uTP only: libtorrent through
tests/interop/lt_peer.py --transport utp (TCP neither made nor accepted), Hyperblow with
--transport utp on `download` and `seed`.

Pairs (seeder -> leecher), run one after another in each repeat, the order reversed every other
repeat so that no pair always runs first:
  lt>lt    a libtorrent seeder serves a libtorrent leecher
  lt>hb    the same libtorrent seeder serves a Hyperblow leecher
  hb>hb    a Hyperblow seeder serves a Hyperblow leecher
The seeders stay up for the whole run; each leecher downloads into a fresh directory and is checked
byte for byte (unless --no-verify). The Hyperblow pairs are left out with a note when the binary has
no --transport switch (before uTP is wired in), or with --pairs lt>lt.

Columns as in bench_real.py: done MB/s (payload / time to the completion line), exit MB/s (to the
leecher's exit), L cpu-s/GiB and S cpu-s/GiB (leecher's and seeder's user+system CPU per GiB),
others (cores busy with other processes during the run) and load1.
"""

import argparse
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_real  # noqa: E402  (the shared bench machinery, next to this script)

ALL_PAIRS = ["lt>lt", "lt>hb", "hb>hb"]


class UtpBench(bench_real.Bench):
    """bench_real's Bench with every peer switched to uTP only."""

    def spawn(self, name, argv, env=None):
        argv = list(argv)
        if len(argv) > 1 and argv[1] == bench_real.LT_PEER:
            argv += ["--transport", "utp"]
        elif len(argv) > 1 and argv[1] in ("download", "seed"):
            argv[2:2] = ["--transport", "utp"]
        return super().spawn(name, argv, env)

    def run(self):
        a = self.args
        print("bench-utp: %d MiB, %d KiB pieces, %d repeats, pairs %s; load before %s"
              % (a.size_mib, a.piece_kib, a.repeat, ",".join(a.pairs), open("/proc/loadavg").read().strip()),
              flush=True)
        label, binary = a.hb[-1]
        lt_seed, lt_addr = self.start_lt_seeder()
        seeders = {"lt": (lt_seed, lt_addr)}
        if any(p.startswith("hb>") for p in a.pairs):
            seeders["hb"] = self.start_hb_seeder(label, binary, a.seed_runtime)
        for r in range(a.repeat):
            print(" repeat %d/%d" % (r + 1, a.repeat), flush=True)
            order = list(a.pairs) if r % 2 == 0 else list(reversed(a.pairs))
            for pair in order:
                seed_kind, leech_kind = pair.split(">")
                seeder, addr = seeders[seed_kind]
                self.leech(leech_kind, seeder, addr, "utp", pair, binary, a.seed_runtime)
        self.table()


    def table(self):
        """Medians per pair, MB/s with one decimal (uTP on a loaded machine can be slow)."""
        import statistics

        cols = [("done_mbs", "done MB/s", "%.1f"), ("exit_mbs", "exit MB/s", "%.1f"),
                ("l_cpu_gib", "L cpu-s/GiB", "%.2f"), ("s_cpu_gib", "S cpu-s/GiB", "%.2f"),
                ("l_rss_mib", "L rss MiB", "%.0f"), ("others", "others", "%.2f"), ("load1", "load1", "%.2f")]
        print()
        print("medians of %d (%d MiB, %d KiB pieces, uTP only); range = min-max of done MB/s"
              % (self.args.repeat, self.args.size_mib, self.args.piece_kib))
        print("| pair | ok | " + " | ".join(c[1] for c in cols) + " | range |")
        print("|---|---|" + "---|" * len(cols) + "---|")
        for pair in self.args.pairs:
            rows = [r for r in self.results if r["config"] == pair]
            if not rows:
                continue
            good = [r for r in rows if r["ok"]] or rows
            meds = []
            for key, _, fmt in cols:
                vals = [r[key] for r in good if r[key] == r[key]]
                meds.append(fmt % statistics.median(vals) if vals else "-")
            done = [r["done_mbs"] for r in good if r["done_mbs"] == r["done_mbs"]]
            span = "%.1f-%.1f" % (min(done), max(done)) if done else "-"
            print("| %s | %d/%d | %s | %s |" % (pair, sum(r["ok"] for r in rows), len(rows), " | ".join(meds), span))
        print("raw results: %s; logs: %s" % (self.out.name, self.log_dir), flush=True)


def has_transport_switch(binary):
    """Whether this Hyperblow build knows `--transport` (uTP wired in)."""
    try:
        out = subprocess.run([binary, "download", "--help"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "--transport" in out.stdout


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=int(os.environ.get("HB_UTP_REPEAT", "5")))
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--piece-kib", type=int, default=1024)
    ap.add_argument("--pairs", default=",".join(ALL_PAIRS), help="comma-separated, from %s" % ALL_PAIRS)
    ap.add_argument("--runtime", dest="seed_runtime", default="tokio",
                    help="runtime of Hyperblow's seeder and leechers")
    ap.add_argument("--hb", default=os.path.join(bench_real.ROOT, "target", "release", "hyperblow"),
                    help="the hyperblow binary")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per leecher run")
    ap.add_argument("--settle", type=float, default=1.0, help="seconds of pause before each run")
    ap.add_argument("--no-verify", dest="verify", action="store_false", help="skip the byte-for-byte compare")
    ap.add_argument("--out", help="JSON-lines file for the raw results")
    args = ap.parse_args()
    args.pairs = [p for p in args.pairs.split(",") if p]
    for p in args.pairs:
        if p not in ALL_PAIRS:
            ap.error("unknown pair %r (known: %s)" % (p, ",".join(ALL_PAIRS)))
    binary = os.path.abspath(args.hb)
    if any("hb" in p for p in args.pairs):
        if not os.access(binary, os.X_OK) or not has_transport_switch(binary):
            print("note: %s is missing or has no --transport switch (uTP not wired in): libtorrent pair only"
                  % binary, flush=True)
            args.pairs = [p for p in args.pairs if "hb" not in p]
    # What bench_real.Bench reads besides the above.
    args.hb = [("hb", binary)]
    args.keep = False
    args.wrap = None
    args.out = args.out or os.path.join(bench_real.ROOT, "target", "bench-real",
                                        "utp-results-%s.jsonl" % time.strftime("%Y%m%d-%H%M%S"))
    bench = UtpBench(args)
    try:
        bench.run()
    finally:
        bench.close()


if __name__ == "__main__":
    main()
