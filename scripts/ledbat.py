#!/usr/bin/python3
"""LEDBAT on a real shared bottleneck: one uTP flow and one TCP flow through a tbf-shaped veth pair.

Run by scripts/ledbat.sh, which creates the two network namespaces and the shaped link, and runs this
script inside namespace A (the seeders' side); the leechers and the echo server run in namespace B
through `ip netns exec`. Not part of CI (needs root and takes a few minutes).

Phases (each flow is one seeder in A serving one leecher in B its own torrent; the data crosses the
bottleneck A -> B, shaped by tbf on A's egress):
  idle   no traffic: the base round-trip time.
  utp    the uTP flow alone: its rate and the queueing delay it causes (LEDBAT aims at 100 ms).
  both   the TCP flow joins: each flow's share of the bottleneck and the queueing delay.
  tcp    the uTP leecher stopped: the TCP flow alone.
The round-trip time is probed all along with small UDP datagrams (every 100 ms) from A to an echo
server in B: they wait in the same tbf queue as the data. Queueing delay = the phase's median RTT
minus the idle median. Rates come from the leechers' own byte counters (libtorrent's total_done,
Hyperblow's `downloaded`), over each phase after its first --warmup seconds.

uTP flow: libtorrent (lt_peer.py --transport utp) or Hyperblow (--utp hb: `--transport utp`).
TCP flow: libtorrent with uTP off (lt_peer.py's default).
"""

import argparse
import json
import os
import random
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_real  # noqa: E402  (Proc: a child whose JSON lines are read with arrival times)

ROOT = bench_real.ROOT
LT_PEER = bench_real.LT_PEER
PY = bench_real.PY

ECHO = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
while True:
    data, addr = s.recvfrom(2048)
    s.sendto(data, addr)
"""


def make_payload(data_dir, name, size_mib, seed):
    """A payload file and its .torrent (made by libtorrent), cached."""
    import libtorrent as lt

    payload_dir = os.path.join(data_dir, name)
    payload = os.path.join(payload_dir, name + ".bin")
    torrent = os.path.join(data_dir, name + ".torrent")
    os.makedirs(payload_dir, exist_ok=True)
    if not os.path.exists(payload) or os.path.getsize(payload) != size_mib << 20:
        print("making %s ..." % payload, flush=True)
        rng = random.Random(seed)
        with open(payload + ".part", "wb") as f:
            for _ in range(size_mib):
                f.write(rng.randbytes(1 << 20))
        os.rename(payload + ".part", payload)
        if os.path.exists(torrent):
            os.remove(torrent)
    if not os.path.exists(torrent):
        fs = lt.file_storage()
        lt.add_files(fs, payload)
        ct = lt.create_torrent(fs, 256 * 1024)
        lt.set_piece_hashes(ct, payload_dir)
        with open(torrent + ".part", "wb") as f:
            f.write(lt.bencode(ct.generate()))
        os.rename(torrent + ".part", torrent)
    return payload_dir, torrent


class Prober:
    """Sends a numbered UDP probe every `interval` s to the echo server; records (time, rtt)."""

    def __init__(self, dest, interval=0.1):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(0.05)
        self.dest = dest
        self.interval = interval
        self.samples = []
        self.sent = 0
        self.stop = False
        threading.Thread(target=self._send, daemon=True).start()
        threading.Thread(target=self._recv, daemon=True).start()

    def _send(self):
        seq = 0
        while not self.stop:
            self.sock.sendto(struct.pack("!Id", seq, time.monotonic()) + b"\0" * 52, self.dest)
            seq += 1
            self.sent = seq
            time.sleep(self.interval)

    def _recv(self):
        while not self.stop:
            try:
                data, _ = self.sock.recvfrom(2048)
            except socket.timeout:
                continue
            now = time.monotonic()
            _, sent = struct.unpack("!Id", data[:12])
            self.samples.append((now, (now - sent) * 1000.0))

    def rtts(self, t0, t1):
        return [r for t, r in self.samples if t0 <= t < t1]


class Flow:
    """One seeder (here, in A) and one leecher (in B) of their own torrent, over one transport."""

    def __init__(self, run, label, impl, transport, torrent, payload_dir):
        self.run, self.label, self.impl, self.transport = run, label, impl, transport
        self.torrent, self.payload_dir = torrent, payload_dir
        self.seeder = None
        self.leecher = None

    def _lt(self, role, save, listen, port, connect=None):
        argv = [PY, LT_PEER, "--torrent", self.torrent, "--role", role, "--save-path", save, "--listen", listen,
                "--port", str(port), "--max-seconds", str(self.run.args.bound), "--reannounce", "0",
                "--interval", "0.5", "--transport", self.transport]
        if connect:
            argv += ["--connect", connect]
        return argv

    def _hb(self, role, save, listen, port, connect=None):
        hb = self.run.args.hb
        if role == "seed":
            return [hb, "seed", self.torrent, save, "--transport", self.transport, "--bind", listen,
                    "--port", str(port), "--json"]
        return [hb, "download", self.torrent, "--output", save, "--transport", self.transport, "--bind", listen,
                "--port", str(port), "--peer", connect, "--json"]

    def start(self):
        a = self.run.args
        port_a, port_b = self.run.port(), self.run.port()
        make = self._lt if self.impl == "lt" else self._hb
        self.seeder = self.run.spawn("%s-seed" % self.label, make("seed", self.payload_dir, a.addr_a, port_a))
        ready = (lambda o: o.get("kind") == "status" and o.get("is_seeding")) if self.impl == "lt" else \
            (lambda o: o.get("event") in ("added", "progress"))
        if self.seeder.wait_line(ready, 300) is None:
            raise RuntimeError("%s seeder did not start; see %s" % (self.label, self.seeder.log.name))
        out = os.path.join(self.run.work, "%s-leech" % self.label)
        os.makedirs(out, exist_ok=True)
        argv = make("leech", out, a.addr_b, port_b, "%s:%d" % (a.addr_a, port_a))
        self.leecher = self.run.spawn("%s-leech" % self.label, ["ip", "netns", "exec", a.ns_b] + argv)

    def received(self):
        """(time, payload bytes received) samples from the leecher's own lines."""
        out = []
        with self.leecher.cond:
            lines = list(self.leecher.lines)
        for t, line in lines:
            if line is None:
                continue
            try:
                o = json.loads(line)
            except ValueError:
                continue
            if self.impl == "lt" and o.get("kind") == "status":
                out.append((t, o.get("total_done", 0)))
            elif self.impl == "hb" and o.get("event") == "progress":
                out.append((t, o.get("have_bytes", 0)))
        return out

    def rate(self, t0, t1):
        """Mean receive rate in bytes/s between the samples nearest to t0 and t1."""
        s = [x for x in self.received() if t0 <= x[0] <= t1]
        if len(s) < 2 or s[-1][0] <= s[0][0]:
            return float("nan")
        return (s[-1][1] - s[0][1]) / (s[-1][0] - s[0][0])

    def stop(self):
        for p in (self.leecher, self.seeder):
            if p is not None:
                p.stop()


class Run:
    def __init__(self, args):
        self.args = args
        self.data_dir = os.path.join(ROOT, "target", "ledbat")
        self.work = os.path.join(self.data_dir, "run-%s" % time.strftime("%Y%m%d-%H%M%S"))
        os.makedirs(self.work)
        self.procs = []
        self.serial = 0
        self.ports = 20000

    def port(self):
        self.ports += 1
        return self.ports

    def spawn(self, name, argv):
        self.serial += 1
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "warn")
        p = bench_real.Proc("%02d-%s" % (self.serial, name), argv, self.work, env)
        self.procs.append(p)
        return p

    def phase(self, name, seconds, flows, prober, rows):
        t0 = time.monotonic()
        time.sleep(seconds)
        t1 = time.monotonic()
        w0 = t0 + min(self.args.warmup, seconds / 2)
        rtts = prober.rtts(w0, t1)
        row = {"phase": name, "seconds": round(t1 - w0, 1),
               "rtt_med_ms": statistics.median(rtts) if rtts else float("nan"),
               "rtt_p90_ms": sorted(rtts)[int(len(rtts) * 0.9)] if rtts else float("nan"),
               "probes": len(rtts)}
        for f in flows:
            row[f.label + "_mbit"] = f.rate(w0, t1) * 8 / 1e6
        rows.append(row)
        print("  %-5s rtt median %.1f ms p90 %.1f ms; %s" % (
            name, row["rtt_med_ms"], row["rtt_p90_ms"],
            ", ".join("%s %.2f Mbit/s" % (f.label, row[f.label + "_mbit"]) for f in flows)), flush=True)
        return row

    def main(self):
        a = self.args
        print("ledbat: bottleneck %s, tbf latency %s; uTP flow %s, TCP flow %s; load before %s"
              % (a.rate, a.latency, a.utp, a.tcp, open("/proc/loadavg").read().strip()), flush=True)
        utp_dir, utp_torrent = make_payload(self.data_dir, "ledbat-utp", a.size_mib, 31)
        tcp_dir, tcp_torrent = make_payload(self.data_dir, "ledbat-tcp", a.size_mib, 32)
        echo_port = self.port()
        self.spawn("echo", ["ip", "netns", "exec", a.ns_b, PY, "-c", ECHO, a.addr_b, str(echo_port)])
        time.sleep(1.0)
        prober = Prober((a.addr_b, echo_port))
        utp = Flow(self, "utp", a.utp, "utp", utp_torrent, utp_dir)
        tcp = Flow(self, "tcp", a.tcp, "tcp", tcp_torrent, tcp_dir)
        rows = []
        try:
            self.phase("idle", a.idle, [], prober, rows)
            idle = rows[0]["rtt_med_ms"]
            utp.start()
            self.phase("utp", a.seconds, [utp], prober, rows)
            tcp.start()
            both = self.phase("both", a.seconds * 1.5, [utp, tcp], prober, rows)
            utp.leecher.stop()
            self.phase("tcp", a.seconds, [tcp], prober, rows)
        finally:
            prober.stop = True
            utp.stop()
            tcp.stop()
        print()
        print("| phase | uTP Mbit/s | TCP Mbit/s | RTT median ms | RTT p90 ms | queueing delay ms | probes |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print("| %s | %s | %s | %.1f | %.1f | %.1f | %d |" % (
                r["phase"], "%.2f" % r["utp_mbit"] if "utp_mbit" in r else "-",
                "%.2f" % r["tcp_mbit"] if "tcp_mbit" in r else "-", r["rtt_med_ms"], r["rtt_p90_ms"],
                r["rtt_med_ms"] - idle, r["probes"]))
        total = both["utp_mbit"] + both["tcp_mbit"]
        if total > 0:
            print("shares while both ran: uTP %.0f %%, TCP %.0f %% of %.2f Mbit/s (bottleneck %s)"
                  % (100 * both["utp_mbit"] / total, 100 * both["tcp_mbit"] / total, total, a.rate))
        print("load after: %s; logs: %s" % (open("/proc/loadavg").read().strip(), self.work), flush=True)
        with open(os.path.join(self.work, "results.json"), "w") as f:
            json.dump({"args": vars(a), "rows": rows}, f, indent=1)

    def close(self):
        for p in self.procs:
            p.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ns-b", required=True, help="the leechers' namespace (this script runs in A's)")
    ap.add_argument("--addr-a", required=True)
    ap.add_argument("--addr-b", required=True)
    ap.add_argument("--rate", default="?", help="the bottleneck's rate (for the report)")
    ap.add_argument("--latency", default="?", help="tbf's queue bound (for the report)")
    ap.add_argument("--utp", choices=["lt", "hb"], default="lt", help="whose uTP flow")
    ap.add_argument("--tcp", choices=["lt", "hb"], default="lt", help="whose TCP flow")
    ap.add_argument("--hb", default=os.path.join(ROOT, "target", "release", "hyperblow"))
    ap.add_argument("--seconds", type=float, default=30.0, help="length of the utp and tcp phases (both: 1.5x)")
    ap.add_argument("--idle", type=float, default=5.0, help="length of the idle phase")
    ap.add_argument("--warmup", type=float, default=8.0, help="seconds of each phase left out of its figures")
    ap.add_argument("--size-mib", type=int, default=256, help="size of each flow's payload")
    ap.add_argument("--bound", type=float, default=600.0, help="hard bound on each peer's run time")
    args = ap.parse_args()
    args.hb = os.path.abspath(args.hb)
    run = Run(args)
    try:
        run.main()
    finally:
        run.close()


if __name__ == "__main__":
    main()
