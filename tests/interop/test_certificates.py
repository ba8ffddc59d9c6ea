"""The self-signed certificate Starling generates per domain (data_dir/certs/): a certificate
for the domain (subject CN and DNS subjectAltName), valid for about a year from a day before it
was made; renewed at start when it expires within 30 days or is of the kind older versions made;
certificates configured in [tls] certs are left alone. Needs the openssl CLI to forge old ones."""

import os
import shutil
import socket
import ssl
import subprocess
import time

import pytest

from conftest import make_server

pytestmark = pytest.mark.starling_only

DAY = 86400


def presented(server, domain):
    """(decoded peer certificate, DER) of a direct-TLS (XEP-0368) handshake with SNI `domain`,
    verified against the certificate file the server keeps for it (so the host name is checked)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, check_hostname
    ctx.load_verify_locations(cafile=cert_path(server, domain))
    ctx.set_alpn_protocols(["xmpp-client"])
    with socket.create_connection((server.host, server.tls_port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=domain) as tls:
            return tls.getpeercert(), tls.getpeercert(binary_form=True)


def cert_path(server, domain):
    return os.path.join(server.data_dir, "certs", f"{domain}.crt")


def file_der(path):
    with open(path) as f:
        return ssl.PEM_cert_to_DER_cert(f.read())


def assert_for_domain_for_a_year(peer, domain):
    subject = dict(x[0] for x in peer["subject"])
    assert subject.get("commonName") == domain, peer
    assert peer.get("subjectAltName") == (("DNS", domain),), peer
    not_before = ssl.cert_time_to_seconds(peer["notBefore"])
    not_after = ssl.cert_time_to_seconds(peer["notAfter"])
    now = time.time()
    assert not_before <= now, f"not valid yet: {peer['notBefore']}"
    assert now - not_before < 2 * DAY, f"valid since long before it was made: {peer['notBefore']}"
    days = (not_after - not_before) / DAY
    assert 360 <= days <= 370, f"valid for {days:.1f} days: {peer['notBefore']} - {peer['notAfter']}"
    assert not_after - now > 360 * DAY, peer["notAfter"]


def openssl_cert(path_stem, cn, san, days):
    if shutil.which("openssl") is None:
        pytest.fail("the openssl CLI is needed to make test certificates (apt-get install openssl)")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-days", str(days), "-subj", f"/CN={cn}", "-addext", f"subjectAltName=DNS:{san}",
                    "-keyout", f"{path_stem}.key", "-out", f"{path_stem}.crt"],
                   check=True, capture_output=True)


def test_generated_certificate_is_for_the_domain_and_a_year(fresh_server):
    for domain in fresh_server.domains:
        peer, der = presented(fresh_server, domain)
        assert_for_domain_for_a_year(peer, domain)
        assert der == file_der(cert_path(fresh_server, domain))
    # kept across a restart (clients that accepted it keep trusting it)
    before = {d: file_der(cert_path(fresh_server, d)) for d in fresh_server.domains}
    fresh_server.restart()
    for domain in fresh_server.domains:
        assert presented(fresh_server, domain)[1] == before[domain]


def test_expiring_or_old_generated_certificate_renewed_at_start(fresh_server):
    fresh_server.stop()
    certs = os.path.join(fresh_server.data_dir, "certs")
    # localhost: a certificate for the domain that expires in 10 days
    openssl_cert(os.path.join(certs, "localhost"), "localhost", "localhost", 10)
    # example.org: what older versions generated (rcgen's defaults: this CN, valid for ages)
    openssl_cert(os.path.join(certs, "example.org"), "rcgen self signed cert", "example.org", 36500)
    old = {d: file_der(cert_path(fresh_server, d)) for d in ("localhost", "example.org")}
    fresh_server.start()
    for domain in ("localhost", "example.org"):
        peer, der = presented(fresh_server, domain)
        assert der != old[domain], f"{domain}: the old certificate is still used"
        assert der == file_der(cert_path(fresh_server, domain))
        assert_for_domain_for_a_year(peer, domain)
    fresh_server.assert_healthy()


def test_unreadable_generated_certificate_replaced_at_start(fresh_server):
    fresh_server.stop()
    with open(cert_path(fresh_server, "localhost"), "w") as f:
        f.write("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n")
    fresh_server.start()
    peer, _ = presented(fresh_server, "localhost")
    assert_for_domain_for_a_year(peer, "localhost")


def test_configured_certificate_is_not_renewed(tmp_path_factory):
    """[tls] certs: the operator's certificate is used as it is, even 10 days before it expires."""
    s = make_server(tmp_path_factory, "tlscfg")
    stem = os.path.join(s.workdir, "operator")
    openssl_cert(stem, "localhost", "localhost", 10)
    with open(f"{stem}.crt", "rb") as f:
        original = f.read()
    with open(s.config_path, "a") as f:
        f.write(f'\n[tls]\ncerts = [{{ domain = "localhost", cert = "{stem}.crt", key = "{stem}.key" }}]\n')
    s.start()
    try:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cafile=f"{stem}.crt")
        with socket.create_connection((s.host, s.tls_port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                der = tls.getpeercert(binary_form=True)
                not_after = ssl.cert_time_to_seconds(tls.getpeercert()["notAfter"])
        assert der == file_der(f"{stem}.crt")
        assert not_after - time.time() < 11 * DAY
        with open(f"{stem}.crt", "rb") as f:
            assert f.read() == original
        assert not os.path.exists(cert_path(s, "localhost")), "a certificate was generated for a configured domain"
    finally:
        s.stop()
