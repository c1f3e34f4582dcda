#!/usr/bin/python3
"""A scriptable libtorrent peer for Hyperblow's interop tests (run it with Debian's /usr/bin/python3).

Seeds or downloads one torrent (a .torrent file or a magnet link) on 127.0.0.1 only, with DHT, local
peer discovery, UPnP, NAT-PMP and uTP switched off (the DHT only with --dht-bootstrap, and then
bootstrapped from the given loopback nodes only; uTP only with --transport), and prints one JSON object per line on stdout:

  {"kind": "status", "t": 1.0, "state": "downloading", "progress": 0.5, "peers": 1, ...}   every --interval s
  {"kind": "event", "t": 0.2, "event": "tracker_reply", "url": "...", "peers": 1}          as alerts arrive
  {"kind": "event", "t": 0.1, "event": "error", "alert": "...", "message": "..."}
  {"kind": "finished", "t": 2.3, "seconds": 2.1}                                          leecher done
  {"kind": "event", "t": 2.4, "event": "flushed", "seconds": 0.1}                          leecher's data on disk
  {"kind": "exit", "t": 9.0, "code": 0, "reason": "..."}                                  always last

Exit codes: 0 = leecher finished (or seeder told to stop with SIGTERM/SIGINT or a `quit` line on
stdin, or its --max-seconds elapsed), 2 = leecher hit --max-seconds before finishing, 3 = bad arguments
or the torrent could not be added, 4 = a leecher's data could not be flushed to disk in time, 5 = it
could not listen on --port (TCP or UDP taken: a `listen_failed` event says which).

libtorrent 2.0 reports a torrent finished once every piece passed its hash check, which can be before
its disk threads have written the last blocks, and the script leaves with os._exit (no graceful
session shutdown). So a leecher, before it exits, asks for the disk cache to be flushed
(torrent_handle.flush_cache, which queues a fence job behind every outstanding write of the torrent)
and waits, bounded, for the cache_flushed_alert that libtorrent posts once that job has run. (The
flush_disk_cache flag of save_resume_data does not do: its alert is posted without waiting for the
flush.)

The script never calls session.wait_for_alert. In libtorrent 2.0.x that call returns a pointer to the
head of the alert queue after releasing the queue's lock, and the Python binding turns it into a Python
object of the alert's class, which reads the alert's vtable. If libtorrent's network thread posts
alerts at that moment and the queue has to grow, the queue's storage is moved and freed first, and the
binding reads freed memory: an occasional SIGSEGV, most likely in a young session (whose queue is still
small) during a burst of alerts, such as a magnet leecher's first connections. libtorrent fixed it in
2.1.0 ("fix race in wait_for_alert()"). AlertWaiter waits instead on a pipe that libtorrent writes to
when an alert arrives (session.set_alert_fd), and the alerts are read only with pop_alerts.
"""

import argparse
import faulthandler
import json
import os
import select
import signal
import sys
import time

import libtorrent as lt

START = time.monotonic()
STOP = False
# How long a leecher waits for its writes to reach the disk before exiting.
FLUSH_TIMEOUT = 10.0


def now():
    return round(time.monotonic() - START, 3)


def emit(obj):
    obj["t"] = now()
    sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
    sys.stdout.flush()


def on_signal(signum, _frame):
    global STOP
    STOP = True


def parse_addr(text):
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError("expected HOST:PORT, got %r" % text)
    # [::1]:6881 -> ("::1", 6881): connect_peer wants the bare address.
    return host.strip("[]"), int(port)


def settings(listen_port, listen_ip="127.0.0.1"):
    host = "[%s]" % listen_ip if ":" in listen_ip else listen_ip
    return {
        "listen_interfaces": "%s:%d" % (host, listen_port),
        "outgoing_interfaces": "",
        # Discovery that could reach beyond the machine: all off.
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "dht_bootstrap_nodes": "",
        # TCP only, like Hyperblow.
        "enable_incoming_utp": False,
        "enable_outgoing_utp": False,
        # Every peer in a loopback swarm has the address 127.0.0.1.
        "allow_multiple_connections_per_ip": True,
        # libtorrent 2.0's SSRF mitigation restricts trackers on localhost; ours are exactly that.
        "ssrf_mitigation": False,
        "announce_to_all_trackers": True,
        "announce_to_all_tiers": True,
        # A refused connect_peer (the other side not listening yet) is retried after 1 s, not 60 s.
        "min_reconnect_time": 1,
        "peer_connect_timeout": 5,
        # Loopback peers are "local": never rate limited, and seeds may connect out.
        "ignore_limits_on_local_network": True,
        "seeding_outgoing_connections": True,
        "listen_system_port_fallback": False,
        # The given port or nothing: by default libtorrent tries the next ten port numbers when its
        # port is taken, and then listens where the harness does not look, while the program that
        # took the port answers in its place. Exit code 5 instead, and the harness picks a new port.
        "max_retry_port_bind": 0,
        # Plaintext BitTorrent out (what Hyperblow speaks); plaintext or MSE accepted in.
        "out_enc_policy": int(lt.enc_policy.pe_disabled),
        "in_enc_policy": int(lt.enc_policy.pe_enabled),
        "alert_mask": lt.alert.category_t.error_notification
        | lt.alert.category_t.status_notification
        | lt.alert.category_t.tracker_notification
        | lt.alert.category_t.connect_notification
        | lt.alert.category_t.peer_notification
        | lt.alert.category_t.storage_notification,
        "user_agent": "hyperblow-interop-lt/" + lt.__version__,
    }


class AlertWaiter:
    """Waits for libtorrent's alerts without session.wait_for_alert (see the module's doc comment).

    libtorrent writes one byte to a pipe whenever an alert lands in an empty queue; `wait` blocks in
    select() on that pipe, bounded by a timeout, and empties it. Both ends are non-blocking, so a full
    pipe (alerts already signalled) never blocks libtorrent's network thread."""

    def __init__(self, ses):
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self.write_fd, False)
        ses.set_alert_fd(self.write_fd)

    def wait(self, timeout_ms):
        """Returns once an alert may be pending or after `timeout_ms` milliseconds."""
        ready, _, _ = select.select([self.read_fd], [], [], timeout_ms / 1000.0)
        if ready:
            try:
                while os.read(self.read_fd, 4096):
                    pass
            except BlockingIOError:
                pass


def flush_to_disk(ses, waiter, handle, timeout):
    """Waits until every write libtorrent queued for `handle` is done; False after `timeout` s."""
    started = time.monotonic()
    handle.flush_cache()
    while time.monotonic() - started < timeout:
        for alert in ses.pop_alerts():
            if type(alert).__name__ == "cache_flushed_alert" and alert.handle == handle:
                emit({"kind": "event", "event": "flushed",
                      "seconds": round(time.monotonic() - started, 3)})
                return True
            if alert.category() & lt.alert.category_t.error_notification:
                emit({"kind": "event", "event": "error", "alert": type(alert).__name__,
                      "message": alert.message()})
        waiter.wait(100)
    emit({"kind": "event", "event": "error", "alert": "flush_timeout",
          "message": "no cache_flushed_alert within %.1f s" % timeout})
    return False


def state_name(status):
    return str(status.state).split(".")[-1]


def main():
    # A crash inside libtorrent (SIGSEGV, SIGABRT) prints the Python stack to stderr, which the test
    # harness keeps in the peer's log: the script's last call names what libtorrent was doing.
    faulthandler.enable()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--torrent", help="path of a .torrent file")
    src.add_argument("--magnet", help="a magnet link")
    ap.add_argument("--role", choices=["seed", "leech"], required=True)
    ap.add_argument("--save-path", required=True, help="directory holding (seed) or receiving (leech) the data")
    ap.add_argument("--port", type=int, required=True, help="TCP listen port (on --listen)")
    ap.add_argument("--listen", default="127.0.0.1", help="IP address to listen on (127.0.0.1, ::1, ...)")
    ap.add_argument("--connect", type=parse_addr, action="append", default=[],
                    help="HOST:PORT of a peer to connect to (retried until connected); repeatable")
    ap.add_argument("--max-seconds", type=float, required=True, help="hard bound on the run time")
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between status lines")
    ap.add_argument("--linger", type=float, default=0.0,
                    help="leecher: keep running (and seeding) this long after finishing")
    ap.add_argument("--reannounce", type=float, default=2.0,
                    help="re-announce this often while there are no peers (0 = never)")
    ap.add_argument("--upload-limit", type=int, default=0,
                    help="cap the upload rate at this many bytes/s, loopback peers included (0 = none)")
    ap.add_argument("--choke-after", type=int, default=0,
                    help="once this many payload bytes are uploaded, choke every peer (unchoke slots 0) "
                         "for --choke-for seconds, then unchoke again (0 = never)")
    ap.add_argument("--choke-for", type=float, default=2.0, help="how long --choke-after chokes")
    ap.add_argument("--encryption", choices=["default", "forced", "enabled", "disabled"], default="default",
                    help="MSE/PE both ways: forced = RC4 only in and out, enabled = MSE offered and accepted "
                         "(plaintext or RC4), disabled = plain BitTorrent only; default = plain out, both in")
    ap.add_argument("--transport", choices=["tcp", "utp", "both"], default="tcp",
                    help="which transports libtorrent may use, in and out: tcp (the default, like the other "
                         "tests), utp (uTP only, BEP 29: TCP connections are neither made nor accepted) or "
                         "both; uTP listens on the UDP port with the TCP port's number")
    ap.add_argument("--dht-bootstrap", type=parse_addr, action="append", default=[],
                    help="HOST:PORT of a DHT node: turns libtorrent's DHT on, bootstrapped from these "
                         "nodes only (never the public routers), with its same-IP and loopback "
                         "restrictions off; repeatable")
    args = ap.parse_args()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    pack = settings(args.port, args.listen)
    if args.encryption != "default":
        policy = {"forced": lt.enc_policy.pe_forced, "enabled": lt.enc_policy.pe_enabled,
                  "disabled": lt.enc_policy.pe_disabled}[args.encryption]
        pack["out_enc_policy"] = int(policy)
        pack["in_enc_policy"] = int(policy)
        pack["allowed_enc_level"] = int(lt.enc_level.rc4 if args.encryption == "forced" else lt.enc_level.both)
        pack["prefer_rc4"] = args.encryption == "forced"
    if args.transport != "tcp":
        pack["enable_incoming_utp"] = True
        pack["enable_outgoing_utp"] = True
        pack["enable_incoming_tcp"] = args.transport == "both"
        pack["enable_outgoing_tcp"] = args.transport == "both"
    if args.dht_bootstrap:
        # Outgoing connections from the listen address too (not the kernel's choice, 127.0.0.1):
        # the DHT tests tell peers apart by address, and a peer that found us in the DHT may dial
        # in before we dial it.
        pack["outgoing_interfaces"] = args.listen
        pack["enable_dht"] = True
        pack["dht_bootstrap_nodes"] = ",".join(
            ("[%s]:%d" if ":" in h else "%s:%d") % (h, p) for h, p in args.dht_bootstrap)
        # Every node of a loopback DHT shares 127.0.0.0/24 (one node per /24 otherwise).
        pack["dht_restrict_routing_ips"] = False
        pack["dht_restrict_search_ips"] = False
        pack["dht_prefer_verified_node_ids"] = False
        pack["dht_enforce_node_id"] = False
        # A bootstrap burst from one address is not an attack here (default: 5 messages/s).
        pack["dht_block_ratelimit"] = 1000
        # Announce new torrents at once and again every few seconds.
        pack["dht_announce_interval"] = 3
        pack["alert_mask"] = pack["alert_mask"] | lt.alert.category_t.dht_notification
    if args.upload_limit > 0:
        # Loopback peers are exempt from rate limits unless this is off.
        pack["ignore_limits_on_local_network"] = False
        pack["upload_rate_limit"] = args.upload_limit
    ses = lt.session(pack)
    waiter = AlertWaiter(ses)
    ses.set_ip_filter(lt.ip_filter())  # explicitly: no IP filter

    try:
        if args.torrent:
            atp = lt.add_torrent_params()
            atp.ti = lt.torrent_info(args.torrent)
        else:
            atp = lt.parse_magnet_uri(args.magnet)
        atp.save_path = args.save_path
        # No DHT/LSD/PEX-from-elsewhere: the peers come from the trackers and --connect only.
        handle = ses.add_torrent(atp)
    except Exception as err:  # noqa: BLE001 - report any failure as one line, then exit 3
        emit({"kind": "exit", "code": 3, "reason": "add_torrent failed: %s" % err})
        return 3

    emit({"kind": "event", "event": "started", "role": args.role, "port": args.port,
          "libtorrent": lt.__version__, "pid": os.getpid()})

    deadline = START + args.max_seconds
    next_status = 0.0
    next_connect = 0.0
    next_reannounce = time.monotonic() + args.reannounce
    next_dht = time.monotonic() + 2.0
    finished_at = None
    choke_phase = "before" if args.choke_after > 0 else "done"
    unchoke_at = None
    stdin_open = not sys.stdin.closed
    code, reason = 0, "stopped"

    while True:
        t = time.monotonic()
        if STOP:
            code, reason = 0, "signal"
            break
        if t >= deadline:
            if args.role == "leech" and finished_at is None:
                code, reason = 2, "max-seconds elapsed before the download finished"
            else:
                code, reason = 0, "max-seconds elapsed"
            break
        if finished_at is not None and t >= finished_at + args.linger:
            code, reason = 0, "finished"
            break
        if stdin_open:
            try:
                ready, _, _ = select.select([sys.stdin], [], [], 0)
            except (OSError, ValueError):
                ready, stdin_open = [], False
            if ready:
                line = sys.stdin.readline()
                if line == "":
                    stdin_open = False
                elif line.strip() == "quit":
                    code, reason = 0, "quit"
                    break

        for alert in ses.pop_alerts():
            name = type(alert).__name__
            if name == "tracker_reply_alert":
                emit({"kind": "event", "event": "tracker_reply", "url": alert.tracker_url(),
                      "peers": alert.num_peers})
            elif name == "tracker_error_alert":
                emit({"kind": "event", "event": "tracker_error", "url": alert.tracker_url(),
                      "message": alert.message()})
            elif name == "tracker_warning_alert":
                emit({"kind": "event", "event": "tracker_warning", "message": alert.message()})
            elif name == "peer_connect_alert":
                emit({"kind": "event", "event": "peer_connect", "message": alert.message()})
            elif name == "peer_disconnected_alert":
                emit({"kind": "event", "event": "peer_disconnected", "message": alert.message()})
            elif name == "listen_succeeded_alert":
                emit({"kind": "event", "event": "listening", "message": alert.message()})
            elif name == "listen_failed_alert":
                emit({"kind": "event", "event": "listen_failed", "message": alert.message()})
                code, reason = 5, "cannot listen on port %d: %s" % (args.port, alert.message())
            elif name == "dht_reply_alert":
                emit({"kind": "event", "event": "dht_reply", "peers": alert.num_peers})
            elif name == "dht_announce_alert":
                emit({"kind": "event", "event": "dht_announce", "message": alert.message()})
            elif name == "dht_bootstrap_alert":
                emit({"kind": "event", "event": "dht_bootstrap"})
            elif name == "torrent_finished_alert" and args.role == "leech" and finished_at is None:
                finished_at = time.monotonic()
                emit({"kind": "finished", "seconds": round(finished_at - START, 3)})
            elif alert.category() & lt.alert.category_t.error_notification:
                emit({"kind": "event", "event": "error", "alert": name, "message": alert.message()})

        if code == 5:
            break
        st = handle.status()
        if args.connect and t >= next_connect and st.num_peers < len(args.connect):
            # connect_peer is a no-op for a peer already connected; a refused one is retried here.
            for host, port in args.connect:
                handle.connect_peer((host, port))
            next_connect = t + 1.0
        if args.reannounce > 0 and t >= next_reannounce and st.num_peers == 0:
            handle.force_reannounce(0, -1, lt.reannounce_flags_t.ignore_min_interval)
            next_reannounce = t + args.reannounce
        if args.dht_bootstrap and t >= next_dht and st.num_peers == 0:
            handle.force_dht_announce()
            next_dht = t + 2.0
        if choke_phase == "before" and st.total_payload_upload >= args.choke_after:
            # No unchoke slots: libtorrent chokes every peer at once, and a peer that speaks the
            # fast extension (BEP 6) gets a reject for each request it still had queued here.
            ses.apply_settings({"unchoke_slots_limit": 0})
            choke_phase, unchoke_at = "choked", t + args.choke_for
            emit({"kind": "event", "event": "choke_all", "uploaded": st.total_payload_upload})
        elif choke_phase == "choked" and t >= unchoke_at:
            ses.apply_settings({"unchoke_slots_limit": 8})
            choke_phase = "done"
            emit({"kind": "event", "event": "unchoke_all", "uploaded": st.total_payload_upload})
        if t >= next_status:
            emit({"kind": "status", "state": state_name(st), "progress": round(st.progress, 4),
                  "peers": st.num_peers, "seeds": st.num_seeds, "download_rate": st.download_rate,
                  "upload_rate": st.upload_rate, "total_done": st.total_done,
                  "total_upload": st.total_payload_upload, "is_seeding": st.is_seeding})
            next_status = t + args.interval
        waiter.wait(100)

    if args.role == "leech" and code != 5 and handle.status().has_metadata:
        # Bounded so that the process stays within --max-seconds plus the harness's slack.
        budget = min(FLUSH_TIMEOUT, max(1.0, deadline + 3.0 - time.monotonic()))
        if not flush_to_disk(ses, waiter, handle, budget) and reason == "finished":
            code, reason = 4, "finished, but the data was not flushed to disk in time"
    st = handle.status()
    emit({"kind": "status", "state": state_name(st), "progress": round(st.progress, 4),
          "peers": st.num_peers, "seeds": st.num_seeds, "download_rate": st.download_rate,
          "upload_rate": st.upload_rate, "total_done": st.total_done,
          "total_upload": st.total_payload_upload, "is_seeding": st.is_seeding})
    emit({"kind": "exit", "code": code, "reason": reason})
    # Leave without the session's graceful shutdown (stopped announces to a tracker that may be gone).
    sys.stdout.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
