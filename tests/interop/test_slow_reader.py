"""A client that stops reading (issue 8: the session actor's outbox).

A session's outbox is bounded in stanzas and bytes, so a client that does not read cannot make
the server buffer without limit: past the bound its session is closed with <resource-constraint/>
(RFC 6120 4.9.3.17). What was queued for it and not written is owed to the user: it is routed
again when the session ends (here: offline storage, the user has no other resource), so every
message reaches the user exactly once, on the stream that stalled or at the next login.
"""

import re
import time

import pytest

from conftest import make_server
from rawxmpp import C, NS_DELAY, StreamClosed, XMPPTimeout, q

pytestmark = [pytest.mark.starling_only, pytest.mark.timeout(120)]

N = 200
BODY = 50_000


@pytest.fixture
def small_outbox_server(tmp_path_factory):
    s = make_server(tmp_path_factory, "smallout")
    with open(s.config_path) as f:
        cfg = f.read()
    assert "[c2s]\n" in cfg
    with open(s.config_path, "w") as f:
        cfg = cfg.replace("[c2s]\n", "[c2s]\nmailbox_size = 64\nmailbox_bytes = 262144\n", 1)
        # Room for every message offline (the suite's servers keep 5).
        f.write(re.sub(r"max_messages = \d+", "max_messages = 1000", cfg))
    s.start()
    yield s
    s.stop()


def _ids(elements):
    return [e.get("id") for e in elements if e.tag == C("message")]


def test_a_client_that_stops_reading_is_closed_and_owed_messages_are_kept(small_outbox_server, clients):
    server = small_outbox_server
    a = clients.add(server.online("sa"))
    b = clients.add(server.online("sb"))
    b.drain(0.3)
    # bob stops reading; alice sends 10 MB of chat to him: more than the socket buffers and
    # the outbox's 256 KiB hold.
    sent = [f"m{i}" for i in range(N)]
    for mid in sent:
        a.send_raw(f"<message to='{b.bare}' type='chat' id='{mid}'><body>{mid}:{'x' * BODY}</body></message>")
    assert a.ping_server(timeout=30).get("type") == "result"  # every message was routed
    # bob reads again: what was written, then the stream error that closed the stalled session.
    first = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            first.append(b.recv(timeout=max(0.1, deadline - time.monotonic())))
        except StreamClosed:
            break
        except XMPPTimeout:
            break
    assert b.stream_error == "resource-constraint", \
        f"stream error {b.stream_error!r} after {len(_ids(first))} messages"
    got_first = _ids(first)
    assert 0 < len(got_first) < N, f"{len(got_first)} of {N} messages before the close"
    # The rest waits in offline storage, in order, each with a delay stamp.
    b2 = clients.add(server.login(b.bare, b.password, presence=True))
    later = []
    while True:
        try:
            later.append(b2.recv(lambda e: e.tag == C("message"), timeout=3))
        except XMPPTimeout:
            break
    got_later = _ids(later)
    assert all(e.find(q(NS_DELAY, "delay")) is not None for e in later), "offline messages without <delay/>"
    everything = got_first + got_later
    missing = sorted(set(sent) - set(everything), key=lambda m: int(m[1:]))
    assert not missing, (f"{len(missing)} messages lost, e.g. {missing[:5]}; {len(got_first)} on the stalled "
                         f"stream, {len(got_later)} offline")
    assert len(everything) == len(set(everything)), "messages delivered twice"
    assert b2.stream_error is None and not b2.closed, "the backlog closed the new session"
    errors = [e for e in a.drain(0.5) if e.get("type") == "error"]
    assert not errors, f"alice got {len(errors)} errors: every message could be kept"
    assert a.ping_server().get("type") == "result"
