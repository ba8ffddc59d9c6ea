"""Port of Smack's LoginIntegrationTest.testInvalidLogin (RFC 6120 6.5.10: a failed
authentication is <not-authorized/>): a random 24-character username that does not exist,
with password 'invalidPassword', fails with <not-authorized/> whichever mechanism Smack picks
(SCRAM-SHA-1 by default; PLAIN over TLS when configured), and the connection may try again."""

import pytest

from rawxmpp import SASLFailure
from test_sint_helpers import rnd


@pytest.mark.parametrize("mech", ["SCRAM-SHA-1", "PLAIN"])
def test_invalid_login(server, clients, mech):
    c = clients.add(server.client())
    c.start()
    with pytest.raises(SASLFailure) as e:
        c.auth(rnd(24), "invalidPassword", mech=mech)
    assert e.value.condition == "not-authorized"
    # a real account can still log in on the same stream
    jid, user, pw = server.new_user("sintlogin")
    c.auth(user, pw, mech=mech)
    assert c.bind("ok") == f"{jid}/ok"
