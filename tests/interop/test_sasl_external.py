"""XEP-0178 §2 / RFC 6120 §13.7.1.4: clients log in with SASL EXTERNAL and a certificate.

A server with `[c2s] client_ca_file` asks clients for a certificate during the TLS handshake
(optional: clients without one, or with one of another CA, still connect and use passwords).
EXTERNAL is offered, first, only for a certificate of those CAs, valid for client authentication,
whose XmppAddrs name accounts of the stream's domain. The exchange's payload is the authorization
identity: empty when the certificate names one account, else the account wanted, one of those it
names (`<invalid-authzid/>` otherwise); an account that does not exist is `<not-authorized/>`.
"""

import base64
import subprocess
import time

import pytest

from conftest import StarlingServer
from pki import CertAuthority
from rawxmpp import C, NS_BIND, NS_SASL, SASLFailure, local, ns_of, q, tostring
from test_sasl2 import NS_SASL2, s2

pytestmark = pytest.mark.starling_only


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return CertAuthority(str(tmp_path_factory.mktemp("client-ca")))


@pytest.fixture(scope="module")
def ext_server(tmp_path_factory, ca):
    s = StarlingServer(str(tmp_path_factory.mktemp("sasl-external")), limits=False,
                       extra_toml=f'[c2s]\nclient_ca_file = "{ca.crt}"')
    s.start()
    yield s
    s.stop()


def connect(server, cert=None, direct_tls=False):
    """A client over TLS (STARTTLS, or direct TLS) that presented `cert`, at the SASL step."""
    c = server.client(direct_tls=direct_tls)
    c.client_cert = cert
    return c.start()


def auth_external(c, authzid=""):
    """EXTERNAL with the authorization identity (RFC 6120 §6.4.2: `=` for an empty one)."""
    payload = base64.b64encode(authzid.encode()).decode() if authzid else "="
    c.send_raw(f"<auth xmlns='{NS_SASL}' mechanism='EXTERNAL'>{payload}</auth>")
    el = c.recv(lambda e: ns_of(e.tag) == NS_SASL, what="SASL reply")
    if local(el.tag) == "failure":
        raise SASLFailure(next(local(ch.tag) for ch in el if local(ch.tag) != "text"), el)
    assert local(el.tag) == "success", tostring(el)
    c.authenticated = True
    c.open_stream()


def test_a_certificate_naming_an_account_logs_it_in(ext_server, ca, clients):
    jid, user, _ = ext_server.new_user("ext")
    cert = ca.client(user, jid)
    c = clients.add(connect(ext_server, cert))
    assert c.mechanisms()[0] == "EXTERNAL", tostring(c.features)
    assert "SCRAM-SHA-256" in c.mechanisms() and "PLAIN" in c.mechanisms()
    # SASL2 lists it too (XEP-0388: the same mechanisms).
    sasl2 = c.feature(NS_SASL2, "authentication")
    assert "EXTERNAL" in [m.text for m in sasl2.findall(s2("mechanism"))], tostring(c.features)
    auth_external(c)
    assert c.feature(NS_BIND, "bind") is not None, tostring(c.features)
    assert c.bind("phone").startswith(jid + "/")
    assert c.ping_server().get("type") == "result"
    # Over direct TLS (XEP-0368) the same, with the account named as authzid (allowed).
    d = clients.add(connect(ext_server, cert, direct_tls=True))
    auth_external(d, jid)
    assert d.bind("desk") == f"{jid}/desk"
    mid = c.message(d.jid, "from the phone")
    assert d.recv_stanza("message", id=mid).findtext(C("body")) == "from the phone"


def test_sasl2_external(ext_server, ca, clients):
    jid, user, _ = ext_server.new_user("ext2")
    c = clients.add(connect(ext_server, ca.client(user + "-s2", jid)))
    c.send_raw(f"<authenticate xmlns='{NS_SASL2}' mechanism='EXTERNAL'>"
               "<initial-response>=</initial-response></authenticate>")
    el = c.recv(lambda e: ns_of(e.tag) == NS_SASL2, what="SASL2 reply")
    assert el.tag == s2("success"), tostring(el)
    assert el.findtext(s2("authorization-identifier")).split("/")[0] == jid


def test_a_certificate_naming_several_accounts_needs_the_authzid(ext_server, ca, clients):
    a, ua, _ = ext_server.new_user("exta")
    b, _, _ = ext_server.new_user("extb")
    cert = ca.client(ua + "-two", a, b)
    c = clients.add(connect(ext_server, cert))
    assert "EXTERNAL" in c.mechanisms()
    with pytest.raises(SASLFailure) as e:
        auth_external(c)
    assert e.value.condition == "invalid-authzid"
    with pytest.raises(SASLFailure) as e:
        auth_external(c, f"nobody@{ext_server.domain}")
    assert e.value.condition == "invalid-authzid"
    auth_external(c, b)
    assert c.bind("x") == f"{b}/x"


def test_external_is_not_offered_for_other_certificates(ext_server, ca, clients, tmp_path):
    """No certificate, a self-signed one, one of the CA for server authentication only, one
    naming only an account of another domain, or only a domain: no EXTERNAL, and asking for it
    is `<invalid-mechanism/>`; the password mechanisms work on the same connection."""
    jid, user, pw = ext_server.new_user("exto")
    other = ca.client(user + "-org", f"{user}@example.org")
    own = CertAuthority(str(tmp_path))  # a CA the server does not trust
    untrusted = own.client(user + "-own", jid)
    server_only = ca.client(user + "-srv", jid, usage="serverAuth")
    domain_only = ca.client(user + "-dom", ext_server.domain)
    for cert in (None, untrusted, server_only, other, domain_only):
        c = clients.add(connect(ext_server, cert))
        assert "EXTERNAL" not in c.mechanisms(), (cert, tostring(c.features))
        with pytest.raises(SASLFailure) as e:
            auth_external(c)
        assert e.value.condition == "invalid-mechanism", cert
        c.auth(user, pw, "SCRAM-SHA-256")
        assert c.bind().startswith(jid + "/")
        c.close()
    # The certificate of example.org's account is good on a stream to example.org.
    c = clients.add(ext_server.client(domain="example.org"))
    c.client_cert = other
    c.start()
    assert "EXTERNAL" in c.mechanisms()


def test_a_revoked_certificate_is_not_trusted(tmp_path_factory, clients):
    """`[c2s] client_crl_file` (RFC 5280 revocation lists of the client CAs): a certificate the
    CA revokes is no longer offered EXTERNAL once the CA's new list is in the file (read again
    when it changes, without a restart), while the CA's other certificates still log in; a list
    file that no longer parses keeps the lists read before (the revoked stays revoked)."""
    d = str(tmp_path_factory.mktemp("crl-ca"))
    ca = CertAuthority(d)
    crls = ca.crl(f"{d}/crls.pem")
    s = StarlingServer(str(tmp_path_factory.mktemp("sasl-external-crl")), limits=False,
                       extra_toml=f'[c2s]\nclient_ca_file = "{ca.crt}"\nclient_crl_file = "{crls}"')
    s.start()
    try:
        a, ua, apw = s.new_user("crla")
        b, ub, _ = s.new_user("crlb")
        alice, bob = ca.client(ua, a), ca.client(ub, b)
        for cert, jid in ((alice, a), (bob, b)):
            c = clients.add(connect(s, cert))
            assert c.mechanisms()[0] == "EXTERNAL", tostring(c.features)
            auth_external(c)
            assert c.bind("r").startswith(jid + "/")
        ca.revoke(alice[0])
        ca.crl(crls)
        deadline = time.monotonic() + 10
        while True:
            c = clients.add(connect(s, alice))
            if "EXTERNAL" not in c.mechanisms():
                break
            assert time.monotonic() < deadline, "the new list was not read: " + tostring(c.features)
            c.close()
            time.sleep(0.3)
        with pytest.raises(SASLFailure) as e:
            auth_external(c)
        assert e.value.condition == "invalid-mechanism"
        c.auth(ua, apw, "SCRAM-SHA-256")  # the password still works
        assert c.bind("pw").startswith(a + "/")
        d2 = clients.add(connect(s, bob))
        auth_external(d2)
        # a broken list file: the lists read before stay
        with open(crls, "w") as f:
            f.write("-----BEGIN X509 CRL-----\nnot a list\n-----END X509 CRL-----\n")
        time.sleep(1.5)
        c = clients.add(connect(s, alice))
        assert "EXTERNAL" not in c.mechanisms(), tostring(c.features)
        e2 = clients.add(connect(s, bob))
        assert c.mechanisms() != e2.mechanisms() and e2.mechanisms()[0] == "EXTERNAL"
        s.assert_healthy()
    finally:
        s.stop()


def test_an_account_that_does_not_exist(ext_server, ca, clients):
    ghost = f"ghost-ext@{ext_server.domain}"
    c = clients.add(connect(ext_server, ca.client("ghost-ext", ghost)))
    assert "EXTERNAL" in c.mechanisms()
    with pytest.raises(SASLFailure) as e:
        auth_external(c)
    assert e.value.condition == "not-authorized"
    ext_server.add_user(ghost, "pw-ghost")
    auth_external(c)
    ext_server.assert_healthy()


def ca_names_requested(port):
    """What `openssl s_client` says of the client certificate request of the direct TLS
    listener on `port`: the CA names the server sent, or None when it asked for no certificate."""
    r = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-alpn", "xmpp-client",
                        "-tls1_3"], input="", capture_output=True, text=True, timeout=30)
    out = r.stdout + r.stderr
    if "No client certificate CA names sent" in out:
        return None
    assert "Acceptable client certificate CA names" in out, out
    return out.split("Acceptable client certificate CA names", 1)[1].split("Requested Signature", 1)[0]


def test_the_handshake_asks_for_a_certificate_only_with_client_cas(server, ext_server, ca, clients):
    """With `[c2s] client_ca_file` the TLS handshake asks for a certificate naming the CAs (the
    client picks one of theirs); without it, nothing is asked, and a certificate the client has
    goes unused: EXTERNAL is never offered."""
    assert "Starling test CA" in ca_names_requested(ext_server.tls_port)
    assert ca_names_requested(server.tls_port) is None
    jid, user, _ = server.new_user("extn")
    c = clients.add(connect(server, ca.client(user, jid)))
    assert "EXTERNAL" not in c.mechanisms()
    assert "PLAIN" in c.mechanisms()
