"""Not a test: message rate through a XEP-0114 component connection, both ways.

    cd tests/interop && STARLING_BIN=... .venv/bin/python component_burst.py [N]

Starts a server with the component listener (test_components.ComponentServer), then
writes N messages at once from the component to a user (all read back in order), and N
from the user (no stream management: each archive write is awaited) to the component;
prints the rates and the number of messages in the user's archive (2 N expected).
"""
import os
import sys
import tempfile
import time

os.environ.setdefault("STARLING_BIN", os.path.join(os.path.dirname(__file__), "../../target/debug/starling"))

from test_components import GW, SECRET, ComponentServer, K  # noqa: E402
from test_mam import mam, rsm  # noqa: E402


def main(n: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        s = ComponentServer(d)
        s.start()
        try:
            gw = s.component(timeout=30)
            gw.login(SECRET)
            u = s.online("b")
            t = time.monotonic()
            gw.send_raw("".join(f"<message from='x@{GW}' to='{u.jid}' id='m{i}' type='chat'>"
                                f"<body>{i}</body></message>" for i in range(n)))
            for i in range(n):
                u.recv_stanza("message", id=f"m{i}", timeout=30)
            dt = time.monotonic() - t
            print(f"component->user: {n} messages in {dt:.2f}s = {n / dt:.0f} msg/s")
            t = time.monotonic()
            u.send_raw("".join(f"<message to='x@{GW}' id='n{i}' type='chat'><body>{i}</body></message>"
                               for i in range(n)))
            for i in range(n):
                gw.recv(lambda e, i=i: e.tag == K("message") and e.get("id") == f"n{i}", timeout=30)
            dt = time.monotonic() - t
            print(f"user->component: {n} messages in {dt:.2f}s = {n / dt:.0f} msg/s")
            _, fin = mam(u, rsm(max_=0))
            print(f"archived for the user: {fin.count}")
        finally:
            s.stop()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
