#!/usr/bin/python3
"""Stress for lt_peer.py's alert waiting (Hyperblow issue 11, item 5): libtorrent 2.0.x crashes in
session.wait_for_alert when its network thread grows the alert queue at the same moment (see
lt_peer.py's doc comment), which shows up as a rare SIGSEGV in young sessions.

Each round starts a fresh session (a young, small alert queue) while a second thread makes
libtorrent's network thread post a burst of alerts (post_session_stats), and the main thread waits
for alerts the way a peer script would:

  lt_alert_stress.py waiter ROUNDS      lt_peer.AlertWaiter (select on set_alert_fd's pipe): must survive
  lt_alert_stress.py wait_for_alert ROUNDS   session.wait_for_alert: crashes in some runs (about one in
                                             six runs of 20 rounds on libtorrent 2.0.8), which is the bug

Prints "survived N rounds, M alerts" and exits 0, or dies by SIGSEGV.
"""

import faulthandler
import os
import sys
import threading
import time

import libtorrent as lt

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lt_peer import AlertWaiter  # noqa: E402

BURST = 3000


def main():
    faulthandler.enable()
    mode, rounds = sys.argv[1], int(sys.argv[2])
    if mode not in ("waiter", "wait_for_alert"):
        sys.exit("mode must be waiter or wait_for_alert")
    total = 0
    for _ in range(rounds):
        ses = lt.session({
            "listen_interfaces": "127.0.0.1:0", "enable_dht": False, "enable_lsd": False,
            "enable_upnp": False, "enable_natpmp": False, "dht_bootstrap_nodes": "",
            "alert_mask": 0x7FFFFFFF, "alert_queue_size": 1000000,
        })
        waiter = AlertWaiter(ses) if mode == "waiter" else None
        poster = threading.Thread(target=lambda: [ses.post_session_stats() for _ in range(BURST)],
                                  daemon=True)
        poster.start()
        # The queue is popped only after the burst has been posted, so it grows (and moves) while
        # we wait; the wait goes on a little after the last post, as libtorrent posts them later.
        settle = None
        while settle is None or time.monotonic() < settle:
            if settle is None and not poster.is_alive():
                settle = time.monotonic() + 0.05
            if waiter is not None:
                waiter.wait(1)
            else:
                ses.wait_for_alert(1)
        total += len(ses.pop_alerts())
        del ses
    print("survived %d rounds, %d alerts" % (rounds, total))
    return 0


if __name__ == "__main__":
    sys.exit(main())
