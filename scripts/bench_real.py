#!/usr/bin/python3
"""Hyperblow against real peers: download from and seed to libtorrent, interleaved, medians of N.

Run it through scripts/bench-real.sh (which builds the release binary first); see the README's
"Benchmarks against real peers". Not part of CI. Needs Debian's /usr/bin/python3 with
python3-libtorrent; everything runs on 127.0.0.1 with DHT, LSD, UPnP, NAT-PMP and uTP off (the
libtorrent side is tests/interop/lt_peer.py; the torrents have no tracker and peers are given
explicitly).

What one run does:
  1. Makes (once, cached in target/bench-real/) a payload of --size-mib MiB of pseudo-random bytes
     and its .torrent with --piece-kib pieces, made by libtorrent (independent of our code).
  2. Download phase: one libtorrent seeder stays up; for each repeat, one after another, a libtorrent
     leecher and a Hyperblow leecher on each runtime (and each --hb binary) download the whole torrent
     from it into a fresh directory that is deleted afterwards.
  3. Seed phase: libtorrent's seeder and Hyperblow's seeder(s) stay up; for each repeat, each seeder
     serves one libtorrent leecher and one Hyperblow leecher, one after another.

Columns (per leecher run; the table gives the median of the repeats per configuration):
  exit MB/s   payload / (leecher process exit - spawn): includes start-up, the final flush
              (libtorrent's flush_cache, Hyperblow's fsync + resume save) and exit.
  done MB/s   payload / (completion event - spawn): libtorrent's torrent_finished_alert line,
              Hyperblow's `torrent_completed` JSON line, as read by this script.
  L cpu/GiB   leecher's user+system CPU seconds over its whole life (wait4 rusage), per GiB.
  L usr, sys  the same split.
  L rss MiB   leecher's peak RSS (VmHWM, sampled every 20 ms).
  S cpu/GiB   seeder's user+system CPU seconds (from /proc/PID/stat) from the leecher's spawn to its
              exit, per GiB.
  others      cores busy with other processes during the run ((machine busy CPU time from
              /proc/stat - leecher - seeder) / wall): the load the figure was measured under.
  load1       /proc/loadavg's 1-minute figure at the end of the run.

Every MB is 10^6 bytes. Raw results go to a JSON-lines file (--out) as well.
"""

import argparse
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LT_PEER = os.path.join(ROOT, "tests", "interop", "lt_peer.py")
PY = "/usr/bin/python3"
TICK = os.sysconf("SC_CLK_TCK")
GIB = float(1 << 30)


def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def proc_cpu(pid):
    """User and system CPU seconds of a live process, or None."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) / TICK, int(fields[12]) / TICK
    except (OSError, IndexError, ValueError):
        return None


def proc_status(pid, key):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def machine_busy():
    """Busy CPU seconds of the whole machine so far (everything but idle and iowait)."""
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    total = sum(vals[:8])
    idle = vals[3] + vals[4]
    return (total - idle) / TICK


def load1():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


class Proc:
    """A child process whose stdout lines are read (with arrival times) by a thread."""

    def __init__(self, name, argv, log_dir, env=None):
        self.name = name
        self.log = open(os.path.join(log_dir, name + ".log"), "w")
        self.lines = []
        self.cond = threading.Condition()
        self.spawned = time.monotonic()
        self.p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self.log, stdin=subprocess.DEVNULL,
                                  env=env, text=True, bufsize=1)
        self.pid = self.p.pid
        self.rusage = None
        self.exited = None
        self.status = None
        # Peak RSS from VmHWM, sampled: wait4's ru_maxrss also counts the RSS this (forking) script
        # had when it started the child.
        self.hwm_kib = 0
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self):
        while self.exited is None and self.p.returncode is None:
            hwm = proc_status(self.pid, "VmHWM")
            if hwm:
                self.hwm_kib = max(self.hwm_kib, hwm)
            time.sleep(0.02)

    def _read(self):
        for line in self.p.stdout:
            t = time.monotonic()
            self.log.write(line)
            with self.cond:
                self.lines.append((t, line))
                self.cond.notify_all()
        with self.cond:
            self.lines.append((time.monotonic(), None))
            self.cond.notify_all()

    def wait_line(self, pred, timeout):
        """Arrival time of the first line for which pred(parsed JSON) holds, or None."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self.cond:
            while True:
                while seen < len(self.lines):
                    t, line = self.lines[seen]
                    seen += 1
                    if line is None:
                        return None
                    try:
                        obj = json.loads(line)
                    except ValueError:
                        continue
                    if pred(obj):
                        return t
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(min(left, 0.5))

    def reap(self, timeout):
        """Waits for the exit (killing it after timeout); records rusage and exit time."""
        deadline = time.monotonic() + timeout
        while True:
            pid, status, ru = os.wait4(self.pid, os.WNOHANG)
            if pid == self.pid:
                self.exited = time.monotonic()
                self.status = status
                self.rusage = ru
                self.p.returncode = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() >= deadline:
                self.kill()
                timeout = 10
                deadline = time.monotonic() + timeout
            time.sleep(0.005)
        return self

    def kill(self):
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def stop(self):
        if self.exited is None and self.p.poll() is None:
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
                self.p.wait()


def make_data(args, data_dir):
    """The payload file and its .torrent (made by libtorrent), cached by size and piece size."""
    import libtorrent as lt

    name = "payload-%dM" % args.size_mib
    payload_dir = os.path.join(data_dir, "seed")
    payload = os.path.join(payload_dir, name)
    torrent = os.path.join(data_dir, "%s-%dk.torrent" % (name, args.piece_kib))
    os.makedirs(payload_dir, exist_ok=True)
    if not os.path.exists(payload) or os.path.getsize(payload) != args.size_mib << 20:
        print("making the payload %s ..." % payload, flush=True)
        rng = random.Random(12)
        tmp = payload + ".part"
        with open(tmp, "wb") as f:
            for _ in range(args.size_mib):
                f.write(rng.randbytes(1 << 20))
        os.rename(tmp, payload)
    if not os.path.exists(torrent):
        print("making %s ..." % torrent, flush=True)
        fs = lt.file_storage()
        lt.add_files(fs, payload)
        ct = lt.create_torrent(fs, args.piece_kib * 1024)
        ct.set_creator("hyperblow bench-real")
        lt.set_piece_hashes(ct, payload_dir)
        with open(torrent + ".part", "wb") as f:
            f.write(lt.bencode(ct.generate()))
        os.rename(torrent + ".part", torrent)
    return payload_dir, payload, torrent


def same_file(a, b):
    if os.path.getsize(a) != os.path.getsize(b):
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x = fa.read(1 << 22)
            if x != fb.read(1 << 22):
                return False
            if not x:
                return True


class Bench:
    def __init__(self, args):
        self.args = args
        self.data_dir = os.path.join(ROOT, "target", "bench-real")
        os.makedirs(self.data_dir, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.log_dir = os.path.join(self.data_dir, "logs-" + stamp)
        os.makedirs(self.log_dir)
        self.out = open(args.out or os.path.join(self.data_dir, "results-%s.jsonl" % stamp), "w")
        self.payload_dir, self.payload, self.torrent = make_data(args, self.data_dir)
        self.size = os.path.getsize(self.payload)
        self.procs = []
        self.results = []
        self.serial = 0

    def spawn(self, name, argv, env=None):
        self.serial += 1
        p = Proc("%03d-%s" % (self.serial, name), argv, self.log_dir, env)
        self.procs.append(p)
        return p

    # --- the peers ---------------------------------------------------------------------------

    def lt_argv(self, role, save_path, port, connect=None):
        argv = [PY, LT_PEER, "--torrent", self.torrent, "--role", role, "--save-path", save_path,
                "--port", str(port), "--max-seconds", str(self.args.timeout if role == "leech" else 86400),
                "--reannounce", "0", "--interval", "5"]
        if connect:
            argv += ["--connect", connect]
        return argv

    def hb_env(self):
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "warn")
        return env

    def start_lt_seeder(self):
        port = free_port()
        p = self.spawn("lt-seed", self.lt_argv("seed", self.payload_dir, port))
        if p.wait_line(lambda o: o.get("kind") == "status" and o.get("is_seeding"), 300) is None:
            raise RuntimeError("libtorrent seeder did not start seeding; see %s" % p.log.name)
        return p, "127.0.0.1:%d" % port

    def start_hb_seeder(self, label, binary, runtime):
        port = free_port()
        argv = [binary, "seed", self.torrent, self.payload_dir, "--runtime", runtime, "--bind", "127.0.0.1",
                "--port", str(port), "--json"]
        p = self.spawn("hb-seed-%s-%s" % (label, runtime), argv, self.hb_env())
        if p.wait_line(lambda o: o.get("event") == "added", 300) is None:
            raise RuntimeError("Hyperblow seeder did not start; see %s" % p.log.name)
        return p, "127.0.0.1:%d" % port

    def leech(self, kind, seeder, seed_addr, phase, config, binary=None, runtime=None):
        """One leecher run against `seeder`; records and returns its numbers."""
        out_dir = os.path.join(self.data_dir, "leech-tmp")
        shutil.rmtree(out_dir, ignore_errors=True)
        os.makedirs(out_dir)
        port = free_port()
        if kind == "lt":
            argv = self.lt_argv("leech", out_dir, port, seed_addr)
            done = lambda o: o.get("kind") == "finished"
            env = None
        else:
            argv = [binary, "download", self.torrent, "--output", out_dir, "--runtime", runtime,
                    "--bind", "127.0.0.1", "--port", str(port), "--peer", seed_addr, "--json"]
            done = lambda o: o.get("event") == "torrent_completed"
            env = self.hb_env()
            if self.args.wrap:
                argv = self.args.wrap.replace("{n}", str(self.serial + 1)).split() + argv
        # Let the previous run's writeback settle a little so that runs start alike.
        time.sleep(self.args.settle)
        s_cpu0 = proc_cpu(seeder.pid)
        busy0 = machine_busy()
        p = self.spawn("%s-%s" % (phase, config), argv, env)
        t_done = p.wait_line(done, self.args.timeout)
        p.reap(self.args.timeout + 30)
        busy1 = machine_busy()
        s_cpu1 = proc_cpu(seeder.pid)
        wall = p.exited - p.spawned
        ok = t_done is not None and p.p.returncode == 0
        name = os.path.basename(self.payload)
        got = os.path.join(out_dir, name)
        if ok and self.args.verify:
            ok = same_file(got, self.payload)
        ru = p.rusage
        l_cpu = ru.ru_utime + ru.ru_stime
        s_cpu = (sum(s_cpu1) - sum(s_cpu0)) if s_cpu0 and s_cpu1 else float("nan")
        gib = self.size / GIB
        row = {
            "phase": phase, "config": config, "ok": ok, "code": p.p.returncode,
            "exit_mbs": self.size / wall / 1e6,
            "done_mbs": (self.size / (t_done - p.spawned) / 1e6) if t_done else float("nan"),
            "wall": wall, "done_s": (t_done - p.spawned) if t_done else None,
            "l_cpu_gib": l_cpu / gib, "l_usr_gib": ru.ru_utime / gib, "l_sys_gib": ru.ru_stime / gib,
            "l_rss_mib": p.hwm_kib / 1024.0,
            "l_minflt": ru.ru_minflt, "l_nvcsw": ru.ru_nvcsw, "l_nivcsw": ru.ru_nivcsw,
            "s_cpu_gib": s_cpu / gib,
            "others": max(0.0, (busy1 - busy0 - l_cpu - (s_cpu if s_cpu == s_cpu else 0)) / wall),
            "load1": load1(), "log": p.log.name,
        }
        self.results.append(row)
        self.out.write(json.dumps(row) + "\n")
        self.out.flush()
        print("  %-32s %s exit %7.1f MB/s  done %7.1f MB/s  L %.2f cpu-s/GiB (usr %.2f sys %.2f)  "
              "rss %6.1f MiB  S %.2f cpu-s/GiB  others %.2f  load %.2f"
              % (config, "ok " if ok else "BAD", row["exit_mbs"], row["done_mbs"], row["l_cpu_gib"],
                 row["l_usr_gib"], row["l_sys_gib"], row["l_rss_mib"], row["s_cpu_gib"], row["others"],
                 row["load1"]), flush=True)
        if not ok:
            print("    (failed: exit %s; log %s)" % (p.p.returncode, p.log.name), flush=True)
        if not self.args.keep:
            shutil.rmtree(out_dir, ignore_errors=True)
        return row

    # --- the phases --------------------------------------------------------------------------

    def hb_leechers(self):
        out = []
        for label, binary in self.args.hb:
            for rt in self.args.runtimes:
                out.append(("hb-%s-%s" % (label, rt) if len(self.args.hb) > 1 else "hb-%s" % rt, binary, rt))
        return out

    def run(self):
        a = self.args
        print("bench-real: %d MiB, %d KiB pieces, %d repeats; load before %s"
              % (a.size_mib, a.piece_kib, a.repeat, open("/proc/loadavg").read().strip()), flush=True)
        lt_seed, lt_addr = self.start_lt_seeder()
        if "download" in a.phases:
            print("download phase: leechers <- one libtorrent seeder", flush=True)
            for r in range(a.repeat):
                print(" repeat %d/%d" % (r + 1, a.repeat), flush=True)
                order = [("lt", None, None, "lt")] + [("hb", b, rt, c) for c, b, rt in self.hb_leechers()]
                if r % 2 == 1:
                    order.reverse()
                for kind, binary, rt, config in order:
                    self.leech(kind, lt_seed, lt_addr, "dl", config, binary, rt)
        if "seed" in a.phases:
            seeders = [("lt-seed", lt_seed, lt_addr)]
            for label, binary in a.hb:
                name = "hb-seed" if len(a.hb) == 1 else "hb-seed-%s" % label
                p, addr = self.start_hb_seeder(label, binary, a.seed_runtime)
                seeders.append((name, p, addr))
            hb_label, hb_bin = a.hb[-1]
            print("seed phase: seeders -> one libtorrent leecher / one Hyperblow leecher (%s, %s)"
                  % (hb_label, a.seed_runtime), flush=True)
            for r in range(a.repeat):
                print(" repeat %d/%d" % (r + 1, a.repeat), flush=True)
                order = list(seeders) if r % 2 == 0 else list(reversed(seeders))
                for sname, sp, saddr in order:
                    self.leech("lt", sp, saddr, "seed", "%s>lt" % sname)
                    self.leech("hb", sp, saddr, "seed", "%s>hb" % sname, hb_bin, a.seed_runtime)
        self.table()

    def table(self):
        cols = [("exit_mbs", "exit MB/s", "%.0f"), ("done_mbs", "done MB/s", "%.0f"),
                ("l_cpu_gib", "L cpu-s/GiB", "%.2f"), ("l_usr_gib", "L usr", "%.2f"),
                ("l_sys_gib", "L sys", "%.2f"), ("l_rss_mib", "L rss MiB", "%.1f"),
                ("s_cpu_gib", "S cpu-s/GiB", "%.2f"), ("others", "others", "%.2f"), ("load1", "load1", "%.2f")]
        print()
        print("medians of %d (%d MiB, %d KiB pieces); spread = (max-min)/median of exit MB/s"
              % (self.args.repeat, self.args.size_mib, self.args.piece_kib))
        print("| phase | config | ok | " + " | ".join(c[1] for c in cols) + " | spread |")
        print("|---|---|---|" + "---|" * len(cols) + "---|")
        seen = []
        for r in self.results:
            if (r["phase"], r["config"]) not in seen:
                seen.append((r["phase"], r["config"]))
        for phase, config in seen:
            rows = [r for r in self.results if r["phase"] == phase and r["config"] == config]
            good = [r for r in rows if r["ok"]] or rows
            meds = []
            for key, _, fmt in cols:
                vals = [r[key] for r in good if r[key] == r[key]]
                meds.append(fmt % statistics.median(vals) if vals else "-")
            ex = [r["exit_mbs"] for r in good]
            spread = (max(ex) - min(ex)) / statistics.median(ex) if ex else float("nan")
            print("| %s | %s | %d/%d | %s | %.0f%% |" % (phase, config, sum(r["ok"] for r in rows), len(rows),
                                                     " | ".join(meds), spread * 100))
        print("raw results: %s; logs: %s" % (self.out.name, self.log_dir), flush=True)

    def close(self):
        for p in self.procs:
            p.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=int(os.environ.get("HB_REAL_REPEAT", "5")))
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--piece-kib", type=int, default=1024)
    ap.add_argument("--runtimes", default="tokio,async-std", help="Hyperblow leecher runtimes")
    ap.add_argument("--seed-runtime", default="tokio", help="runtime of Hyperblow's seeder and seed-phase leecher")
    ap.add_argument("--phases", default="download,seed")
    ap.add_argument("--hb", action="append", default=[], metavar="[LABEL=]PATH",
                    help="a hyperblow binary (repeat to compare builds, e.g. before=... after=...; "
                         "default target/release/hyperblow)")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per leecher run")
    ap.add_argument("--settle", type=float, default=1.0, help="seconds of pause before each run")
    ap.add_argument("--no-verify", dest="verify", action="store_false", help="skip the byte-for-byte compare")
    ap.add_argument("--keep", action="store_true", help="keep the last download")
    ap.add_argument("--out", help="JSON-lines file for the raw results")
    ap.add_argument("--wrap", help="profiling only: a command prefix for every Hyperblow leecher, e.g. "
                                   "'perf record -g -o /tmp/hb-{n}.data --' ({n}: the run's serial number); "
                                   "its CPU and memory figures then include the wrapper's")
    args = ap.parse_args()
    hb = []
    for spec in args.hb or [os.path.join(ROOT, "target", "release", "hyperblow")]:
        label, _, path = spec.rpartition("=")
        hb.append((label or "hb", os.path.abspath(path)))
    args.hb = hb
    args.runtimes = [r for r in args.runtimes.split(",") if r]
    args.phases = [p for p in args.phases.split(",") if p]
    for _, path in hb:
        if not os.access(path, os.X_OK):
            ap.error("no hyperblow binary at %s (build it: cargo build --release -p hyperblow-cli)" % path)
    bench = Bench(args)
    try:
        bench.run()
    finally:
        bench.close()


if __name__ == "__main__":
    main()
