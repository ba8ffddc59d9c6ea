"""Server CPU per delivered groupchat message (a measurement, not a test).

    tests/interop/.venv/bin/python tests/interop/muc_cpu.py --bin target/release/starling \
        --occupants 50 --messages 2000

Starts one server, logs in N occupants (rawxmpp over STARTTLS) that join one room, then one
of them sends M groupchat messages at once. Each occupant's socket is drained without parsing
(the reflected messages are counted by their closing tag). The figure is the server process's
CPU time (user + system, /proc/PID/stat) from the first send until every occupant has all M
messages, divided by N x M deliveries. Everything the server does for them counts: parsing the
sent stanza, the room, the archive write, the fan-out, TLS and the socket writes.
"""

import argparse
import os
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import conftest  # noqa: E402
from rawxmpp import C  # noqa: E402


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(parts[11]) + int(parts[12])) / ticks


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.environ.get("STARLING_BIN", "target/release/starling"))
    ap.add_argument("--occupants", type=int, default=50)
    ap.add_argument("--messages", type=int, default=2000)
    a = ap.parse_args()
    conftest.STARLING_BIN = os.path.abspath(a.bin)
    work = tempfile.mkdtemp(prefix="muc-cpu-")
    srv = conftest.StarlingServer(work)
    srv.start()
    try:
        room = f"bench{os.getpid()}@conference.localhost"
        clients = []
        for i in range(a.occupants):
            c = srv.online("mb")
            c.presence(to=f"{room}/n{i}", extra="<x xmlns='http://jabber.org/protocol/muc'><history maxstanzas='0'/></x>")
            c.recv(lambda e: e.tag == C("message") and e.find(C("subject")) is not None, timeout=30)
            if i == 0:
                c.iq("set", "<query xmlns='http://jabber.org/protocol/muc#owner'>"
                     "<x xmlns='jabber:x:data' type='submit'/></query>", to=room)
            clients.append(c)
        time.sleep(1.0)
        for c in clients:
            c.drain(0.1)
        counts = [0] * len(clients)
        done = threading.Event()

        def reader(i, c):
            sock = c.sock
            sock.settimeout(60)
            tail = b""
            while counts[i] < a.messages:
                data = sock.recv(65536)
                if not data:
                    break
                buf = tail + data
                counts[i] += buf.count(b"</message>")
                tail = buf[-10:]
            done.set()

        threads = [threading.Thread(target=reader, args=(i, c), daemon=True) for i, c in enumerate(clients)]
        for t in threads:
            t.start()
        pid = srv.pid
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        sender = clients[0]
        body = "x" * 40
        chunk = []
        for k in range(a.messages):
            chunk.append(f"<message to='{room}' type='groupchat' id='b{k}'><body>{body} {k}</body></message>")
            if len(chunk) == 50:
                sender.sock.sendall("".join(chunk).encode())
                chunk = []
        if chunk:
            sender.sock.sendall("".join(chunk).encode())
        for t in threads:
            t.join(300)
        wall = time.monotonic() - t0
        cpu = cpu_seconds(pid) - cpu0
        delivered = sum(min(x, a.messages) for x in counts)
        print(f"FIGURE: muc_occupants={a.occupants} messages={a.messages} delivered={delivered}")
        print(f"FIGURE: muc_server_cpu_s={cpu:.3f} wall_s={wall:.2f}")
        print(f"FIGURE: muc_cpu_per_delivered_us={cpu / max(delivered, 1) * 1e6:.2f}")
        print(f"FIGURE: muc_messages_per_s={a.messages / wall:.0f}")
    finally:
        srv.stop()


if __name__ == "__main__":
    main()
