"""A login storm must not take the node's last file descriptors.

Found by the reconnect-storm bench (issue 9): with every descriptor held by
client sockets, the store could not open its files, Raft stopped and the node
lost writes. The node now raises its soft descriptor limit to the hard one and
keeps a reserve (node/src/net/mod.rs, ``max_connections``): past it, new
connections wait in the listen backlog, and what is already connected keeps
working, writes included.
"""

import socket
import time
import urllib.request

import pytest

from conftest import HANDSHAKE_TIMEOUT, make_server
from rawxmpp import tostring

NOFILE = 1300
# What the node allows itself with NOFILE descriptors: NOFILE less min(1024, NOFILE / 4).
MAX_CONNECTIONS = NOFILE - min(1024, NOFILE // 4)


def shaped_by_descriptors(srv) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{srv.metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    for line in text.splitlines():
        if line.startswith("starling_c2s_shaped_total") and 'reason="descriptors"' in line:
            return float(line.split()[-1])
    return 0.0


@pytest.mark.starling_only
def test_connection_flood_leaves_descriptors_for_the_store(tmp_path_factory, clients):
    srv = make_server(tmp_path_factory, "fdlimit")
    srv.cmd_prefix = ["prlimit", f"--nofile={NOFILE}:{NOFILE}", "--"]
    srv.start()
    try:
        a = clients.add(srv.online("fda"))
        b_jid, _, b_pw = srv.new_user("fdb")
        # More idle connections than the node may hold (each accepted one is a
        # descriptor of the server; the rest wait in its listen backlog).
        flood = []
        for _ in range(MAX_CONNECTIONS + 150):
            s = socket.create_connection(("127.0.0.1", srv.c2s_port), timeout=5)
            flood.append(s)
        deadline = time.monotonic() + HANDSHAKE_TIMEOUT
        while shaped_by_descriptors(srv) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert shaped_by_descriptors(srv) >= 1, "the node never reached its connection limit"

        # At the limit, the connected client is served and the store writes:
        # offline messages are stored (a Raft write, sled files) and the
        # ping after them is answered only once they are.
        ids = [a.message(b_jid, f"at the limit {i}") for i in range(3)]
        r = a.ping_server()
        assert r.get("type") == "result", tostring(r)

        # The flood goes (the server also drops it after its handshake
        # timeout): new logins are served again, and nothing was lost.
        for s in flood:
            s.close()
        b = clients.add(srv.login(b_jid, b_pw, presence=True))
        got = [b.recv_stanza("message", timeout=10).get("id") for _ in ids]
        assert got == ids
        assert srv.alive(), srv.log_tail()
        log = srv.log_tail(2_000_000)
        assert "Too many open files" not in log, log[-3000:]
        srv.assert_healthy(a)
    finally:
        srv.stop()
