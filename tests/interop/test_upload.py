"""XEP-0363 HTTP File Upload on one node: discovery (the domain's disco#items lists
upload.<domain>, whose disco#info has identity store/file, the feature and the XEP-0128
form with max-file-size), slot requests with rawxmpp and slixmpp, the PUT and GET over
HTTPS (content, Content-Type, Content-Disposition, nosniff, HEAD, Range), and every
refusal: too large (not-acceptable + <file-too-large/>), bad file names, negative or
non-numeric size (bad-request), quota and slot rate (resource-constraint + retry), a
wrong / tampered / missing token (403), a wrong Content-Length or Content-Type (400/413),
a second PUT (409), an expired slot (410), expiry of stored files (deleted from disk,
quota released), files of deleted accounts, restarts, and the configuration.
"""

import asyncio
import calendar
import http.client
import io
import os
import socket
import ssl
import subprocess
import time
import urllib.parse
import xml.etree.ElementTree as ET

import pytest

from conftest import free_port, make_server
from rawxmpp import C, q, stanza_error, tostring

pytestmark = pytest.mark.starling_only

NS_UPLOAD = "urn:xmpp:http:upload:0"
NS_INFO = "http://jabber.org/protocol/disco#info"
NS_ITEMS = "http://jabber.org/protocol/disco#items"
NS_DATA = "jabber:x:data"
MAX_FILE = 4096
QUOTA = 10000


def upload_server(tmp_path_factory, name, extra="", **cfg):
    """A server with [upload] on a free port; URLs point at 127.0.0.1. ``extra``: more
    configuration (other sections)."""
    s = make_server(tmp_path_factory, name)
    if extra:
        with open(s.config_path, "a") as f:
            f.write("\n" + extra + "\n")
    s.upload_port = int(cfg.get("port") or free_port())
    opts = {"enabled": "true", "bind": '"127.0.0.1"', "port": str(s.upload_port),
            "public_url": f'"https://127.0.0.1:{s.upload_port}"',
            "max_file_size": str(MAX_FILE), "quota_bytes": str(QUOTA)}
    opts.update({k: str(v) for k, v in cfg.items()})
    with open(s.config_path, "a") as f:
        f.write("\n[upload]\n" + "".join(f"{k} = {v}\n" for k, v in opts.items()))
    s.start()
    deadline = time.monotonic() + 20
    while True:
        try:
            with socket.create_connection(("127.0.0.1", s.upload_port), timeout=2):
                break
        except OSError:
            if time.monotonic() > deadline:
                s.stop()
                pytest.fail("upload listener did not open:\n" + s.log_tail())
            time.sleep(0.2)
    return s


@pytest.fixture(scope="module")
def up(tmp_path_factory):
    s = upload_server(tmp_path_factory, "upload")
    yield s
    s.stop()


def tls_context():
    # The server's certificate is self-signed for the XMPP domain: the test trusts it
    # explicitly by not verifying (loopback only).
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def https(s, method, path, body=None, headers=None, port=None):
    conn = http.client.HTTPSConnection("127.0.0.1", port or s.upload_port, context=tls_context(), timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data
    finally:
        conn.close()


def request_xml(filename, size, ctype=None):
    esc = lambda v: str(v).replace("&", "&amp;").replace("'", "&apos;").replace("<", "&lt;")
    ct = f" content-type='{esc(ctype)}'" if ctype else ""
    return f"<request xmlns='{NS_UPLOAD}' filename='{esc(filename)}' size='{esc(size)}'{ct}/>"


def slot(c, filename, size, ctype=None, domain="localhost"):
    r = c.iq("get", request_xml(filename, size, ctype), to=f"upload.{domain}")
    return r


def parse_slot(r):
    assert r.get("type") == "result", tostring(r)
    s = r.find(q(NS_UPLOAD, "slot"))
    assert s is not None, tostring(r)
    put = s.find(q(NS_UPLOAD, "put"))
    get = s.find(q(NS_UPLOAD, "get"))
    headers = {h.get("name"): h.text for h in put.findall(q(NS_UPLOAD, "header"))}
    # XEP-0363 §4: only these headers may be given.
    assert set(headers) <= {"Authorization", "Cookie", "Expires"}, headers
    return put.get("url"), headers, get.get("url")


def path_of(url):
    return urllib.parse.urlsplit(url).path


def put(s, url, body, headers, ctype=None, length=None):
    h = dict(headers)
    if ctype:
        h["Content-Type"] = ctype
    if length is not None:
        h["Content-Length"] = str(length)
    return https(s, "PUT", path_of(url), body=body, headers=h)


def upload(s, c, name, data, ctype="text/plain"):
    put_url, headers, get_url = parse_slot(slot(c, name, len(data), ctype))
    st, _, body = put(s, put_url, data, headers, ctype)
    assert st == 201, (st, body)
    return put_url, headers, get_url


def error_of(r):
    t, cond = stanza_error(r)
    return t, cond, r.find(C("error"))


# ------------------------------------------------------------------ discovery

def test_domain_lists_the_upload_service_with_its_form(up):
    c = up.online("upd", presence=False)
    try:
        r = c.iq("get", f"<query xmlns='{NS_ITEMS}'/>", to="localhost")
        jids = [i.get("jid") for i in r.find(q(NS_ITEMS, "query")).findall(q(NS_ITEMS, "item"))]
        assert "upload.localhost" in jids, tostring(r)
        r = c.iq("get", f"<query xmlns='{NS_ITEMS}'/>", to="example.org")
        jids = [i.get("jid") for i in r.find(q(NS_ITEMS, "query")).findall(q(NS_ITEMS, "item"))]
        assert "upload.example.org" in jids, tostring(r)

        r = c.iq("get", f"<query xmlns='{NS_INFO}'/>", to="upload.localhost")
        assert r.get("type") == "result" and r.get("from") == "upload.localhost", tostring(r)
        qe = r.find(q(NS_INFO, "query"))
        ids = [(i.get("category"), i.get("type")) for i in qe.findall(q(NS_INFO, "identity"))]
        assert ("store", "file") in ids
        feats = [f.get("var") for f in qe.findall(q(NS_INFO, "feature"))]
        assert NS_UPLOAD in feats
        form = qe.find(q(NS_DATA, "x"))
        fields = {f.get("var"): f.findtext(q(NS_DATA, "value")) for f in form.findall(q(NS_DATA, "field"))}
        assert fields["FORM_TYPE"] == NS_UPLOAD and fields["max-file-size"] == str(MAX_FILE), fields
        # An unknown payload to the service: service-unavailable; a set of a get-only one: not-allowed.
        r = c.iq("get", "<query xmlns='jabber:iq:version'/>", to="upload.localhost")
        assert stanza_error(r)[1] == "service-unavailable"
        r = c.iq("set", request_xml("a.txt", 3), to="upload.localhost")
        assert stanza_error(r)[1] == "not-allowed"
    finally:
        c.close()


def peer_cert(port, sni):
    ctx = tls_context()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=sni) as tls:
            return tls.getpeercert(binary_form=True)


def test_https_presents_the_domains_certificates(up):
    """The upload listener's certificate is the c2s one of the domain named by SNI, also
    when SNI names the upload service."""
    for domain in ("localhost", "example.org"):
        assert peer_cert(up.upload_port, domain) == peer_cert(up.tls_port, domain), domain
        # The service's own name (the host of the default URLs) gets its domain's certificate.
        assert peer_cert(up.upload_port, f"upload.{domain}") == peer_cert(up.tls_port, domain), domain
    assert peer_cert(up.upload_port, "localhost") != peer_cert(up.upload_port, "example.org")


def test_generated_certificate_is_valid_for_the_upload_host(up, tmp_path):
    """The host of the default slot URLs is upload.<domain>: the generated certificate of
    each domain names it, so a client that trusts the certificate and checks the host name
    (as every browser and HTTP library does) accepts the HTTPS listener under that name."""
    for domain in ("localhost", "example.org"):
        pem = ssl.DER_cert_to_PEM_cert(peer_cert(up.upload_port, f"upload.{domain}"))
        ca = tmp_path / f"{domain}.pem"
        ca.write_text(pem)
        ctx = ssl.create_default_context(cafile=str(ca))
        assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
        for name in (f"upload.{domain}", domain):
            with socket.create_connection(("127.0.0.1", up.upload_port), timeout=5) as raw:
                with ctx.wrap_socket(raw, server_hostname=name) as tls:
                    assert tls.version() is not None
        # and the same certificate is refused for a name it does not carry
        with socket.create_connection(("127.0.0.1", up.upload_port), timeout=5) as raw:
            with pytest.raises(ssl.SSLCertVerificationError):
                ctx.wrap_socket(raw, server_hostname=f"files.{domain}")


def test_configured_certificate_of_the_upload_host(tmp_path_factory, tmp_path):
    """[tls] certs may give upload.<domain> a certificate of its own: the listener presents
    it for that name (SNI), and the domain keeps its own."""
    stem = tmp_path / "upload.localhost"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-days", "30", "-subj", "/CN=upload.localhost",
                    "-addext", "subjectAltName=DNS:upload.localhost",
                    "-keyout", f"{stem}.key", "-out", f"{stem}.crt"], check=True, capture_output=True)
    extra = f'[tls]\ncerts = [{{ domain = "upload.localhost", cert = "{stem}.crt", key = "{stem}.key" }}]'
    s = upload_server(tmp_path_factory, "upcert", extra=extra)
    try:
        with open(f"{stem}.crt") as f:
            want = ssl.PEM_cert_to_DER_cert(f.read())
        assert peer_cert(s.upload_port, "upload.localhost") == want
        assert peer_cert(s.upload_port, "localhost") != want
        assert peer_cert(s.upload_port, "localhost") == peer_cert(s.tls_port, "localhost")
    finally:
        s.stop()


def test_cors_lets_web_clients_put_and_get(up):
    """XEP-0363 for web clients (Converse.js): the browser's preflight OPTIONS for a PUT with
    the slot's Authorization header and a Content-Type is allowed, and the PUT and GET
    answers carry Access-Control-Allow-Origin."""
    c = up.online("upcors", presence=False)
    try:
        data = b"from a browser"
        put_url, headers, get_url = parse_slot(slot(c, "web.txt", len(data), "text/plain"))
        origin = {"Origin": "https://web.example.net"}
        st, h, _ = https(up, "OPTIONS", path_of(put_url), headers={
            **origin, "Access-Control-Request-Method": "PUT",
            "Access-Control-Request-Headers": "authorization,content-type"})
        assert 200 <= st < 300, (st, h)
        assert h.get("access-control-allow-origin") in ("*", origin["Origin"]), h
        methods = {m.strip().upper() for m in h.get("access-control-allow-methods", "").split(",")}
        assert {"PUT", "GET"} <= methods, h
        allowed = {x.strip().lower() for x in h.get("access-control-allow-headers", "").split(",")}
        assert {"authorization", "content-type"} <= allowed, h
        st, h, body = put(up, put_url, data, {**headers, **origin}, "text/plain")
        assert st == 201 and h.get("access-control-allow-origin") in ("*", origin["Origin"]), (st, h, body)
        st, h, body = https(up, "GET", path_of(get_url), headers=origin)
        assert st == 200 and body == data
        assert h.get("access-control-allow-origin") in ("*", origin["Origin"]), h
        st, h, _ = https(up, "HEAD", path_of(get_url), headers=origin)
        assert st == 200 and h.get("access-control-allow-origin") in ("*", origin["Origin"]), h
        up.assert_healthy(c)
    finally:
        c.close()


# ------------------------------------------------------------------ the happy path

def test_put_then_get_with_headers(up):
    c = up.online("upp", presence=False)
    try:
        data = b"hello, upload \x00\xff" * 10
        put_url, headers, get_url = upload(up, c, "hello wörld.png", data, "image/png")
        assert put_url == get_url and get_url.startswith(f"https://127.0.0.1:{up.upload_port}/")
        assert "Authorization" in headers
        st, h, body = https(up, "GET", path_of(get_url))
        assert st == 200 and body == data
        assert h["content-type"] == "image/png"
        assert h["x-content-type-options"] == "nosniff"
        assert h["content-disposition"].startswith("inline"), h
        assert int(h["content-length"]) == len(data)
        st, h, body = https(up, "HEAD", path_of(get_url))
        assert st == 200 and body == b"" and int(h["content-length"]) == len(data)
        st, h, body = https(up, "GET", path_of(get_url), headers={"Range": "bytes=2-5"})
        assert st == 206 and body == data[2:6], (st, h)
        # The same slot id with another name is not the file.
        other = path_of(get_url).rsplit("/", 1)[0] + "/other.png"
        assert https(up, "GET", other)[0] == 404
        # A browser-runnable type is an attachment.
        _, _, html_url = upload(up, c, "page.html", b"<script>alert(1)</script>", "text/html")
        st, h, _ = https(up, "GET", path_of(html_url))
        assert st == 200 and h["content-disposition"].startswith("attachment"), h
        assert h["content-type"].startswith("text/html") and h["x-content-type-options"] == "nosniff"
        up.assert_healthy(c)
    finally:
        c.close()


def test_slixmpp_finds_the_service_and_gets_a_slot(up):
    slixmpp = pytest.importorskip("slixmpp")
    jid, _, pw = up.new_user("upslix")
    data = b"from slixmpp\n"

    async def scenario():
        x = slixmpp.ClientXMPP(f"{jid}/slix", pw)
        x.register_plugin("xep_0030")
        x.register_plugin("xep_0363")
        x.ssl_context.check_hostname = False
        x.ssl_context.verify_mode = ssl.CERT_NONE
        started = asyncio.get_running_loop().create_future()
        x.add_event_handler("session_start", lambda _: started.done() or started.set_result(True))
        x.connect(up.host, up.c2s_port)
        await asyncio.wait_for(started, 15)
        try:
            info = await x["xep_0363"].find_upload_service(timeout=10)
            assert info is not None and str(info["from"]) == "upload.localhost"
            iq = await x["xep_0363"].request_slot(info["from"], "slix.txt", len(data), "text/plain", timeout=10)
            s = iq["http_upload_slot"]
            return s["put"]["url"], {h["name"]: h["value"] for h in s["put"]["headers"]}, s["get"]["url"]
        finally:
            x.disconnect()
            await asyncio.sleep(0.2)

    put_url, headers, get_url = asyncio.run(asyncio.wait_for(scenario(), 60))
    st, _, _ = put(up, put_url, data, headers, "text/plain")
    assert st == 201
    st, h, body = https(up, "GET", path_of(get_url))
    assert st == 200 and body == data and h["content-type"].startswith("text/plain")


def test_slixmpp_upload_file_over_plain_http(tmp_path_factory):
    """slixmpp's whole upload_file (discovery, max-file-size from the form, slot, PUT with
    the slot's headers through aiohttp) against a listener in plain-HTTP mode (behind a
    TLS-terminating proxy)."""
    slixmpp = pytest.importorskip("slixmpp")
    pytest.importorskip("aiohttp")
    port = free_port()
    s = upload_server(tmp_path_factory, "upplain", tls="false", public_url=f'"http://127.0.0.1:{port}"',
                      port=port)
    try:
        jid, _, pw = s.new_user("upslx")
        data = b"uploaded by slixmpp over aiohttp\n" * 3

        async def scenario():
            x = slixmpp.ClientXMPP(f"{jid}/slix", pw)
            x.register_plugin("xep_0030")
            x.register_plugin("xep_0363")
            x.ssl_context.check_hostname = False
            x.ssl_context.verify_mode = ssl.CERT_NONE
            started = asyncio.get_running_loop().create_future()
            x.add_event_handler("session_start", lambda _: started.done() or started.set_result(True))
            x.connect(s.host, s.c2s_port)
            await asyncio.wait_for(started, 15)
            try:
                url = await x["xep_0363"].upload_file("notes.txt", size=len(data), content_type="text/plain",
                                                      input_file=io.BytesIO(data), timeout=10)
                assert x["xep_0363"].max_file_size == MAX_FILE
                with pytest.raises(slixmpp.plugins.xep_0363.FileTooBig):
                    await x["xep_0363"].upload_file("big.bin", size=MAX_FILE + 1,
                                                    input_file=io.BytesIO(b""), timeout=10)
                return url
            finally:
                x.disconnect()
                await asyncio.sleep(0.2)

        url = asyncio.run(asyncio.wait_for(scenario(), 60))
        assert url.startswith(f"http://127.0.0.1:{port}/")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", path_of(url))
        r = conn.getresponse()
        assert r.status == 200 and r.read() == data and r.getheader("Content-Type").startswith("text/plain")
        conn.close()
    finally:
        s.stop()


# ------------------------------------------------------------------ slot refusals

def test_too_large_is_not_acceptable_with_max_size(up):
    c = up.online("upl", presence=False)
    try:
        r = slot(c, "big.bin", MAX_FILE + 1)
        t, cond, err = error_of(r)
        assert (t, cond) == ("modify", "not-acceptable"), tostring(r)
        ftl = err.find(q(NS_UPLOAD, "file-too-large"))
        assert ftl is not None and ftl.findtext(q(NS_UPLOAD, "max-file-size")) == str(MAX_FILE), tostring(r)
        # A size beyond 64 bits is still a size: too large, not malformed.
        r = slot(c, "huge.bin", "99999999999999999999999")
        t, cond, err = error_of(r)
        assert (t, cond) == ("modify", "not-acceptable"), tostring(r)
        assert err.find(q(NS_UPLOAD, "file-too-large")).findtext(q(NS_UPLOAD, "max-file-size")) == str(MAX_FILE)
        # Exactly the maximum is fine.
        assert slot(c, "max.bin", MAX_FILE).get("type") == "result"
        up.assert_healthy(c)
    finally:
        c.close()


@pytest.mark.parametrize("name", ["", "../../etc/passwd", "..", "a/b.txt", "a\\b.txt", "/etc/passwd"])
def test_bad_file_names_are_not_acceptable(up, name):
    """A name the service will not store is a request it understands but refuses
    (RFC 6120 8.3.3.9 not-acceptable); a missing filename is malformed (bad-request)."""
    c = up.online("upn", presence=False)
    try:
        r = slot(c, name, 10)
        assert stanza_error(r) == ("modify", "not-acceptable"), tostring(r)
        assert r.find(C("error")).find(q(NS_UPLOAD, "file-too-large")) is None, tostring(r)
        r = c.iq("get", f"<request xmlns='{NS_UPLOAD}' size='10'/>", to="upload.localhost")
        assert stanza_error(r) == ("modify", "bad-request"), tostring(r)
        up.assert_healthy(c)
    finally:
        c.close()


@pytest.mark.parametrize("ref", ["&#9;", "&#10;", "&#133;", "&#127;"])
def test_control_character_in_name_is_not_acceptable(up, ref):
    """Control characters, sent as character references (a raw tab or newline in an
    attribute would be normalised to a space by the XML parser)."""
    c = up.online("upc", presence=False)
    try:
        r = c.iq("get", f"<request xmlns='{NS_UPLOAD}' filename='a{ref}b.txt' size='10'/>", to="upload.localhost")
        assert stanza_error(r) == ("modify", "not-acceptable"), tostring(r)
        up.assert_healthy(c)
    finally:
        c.close()


@pytest.mark.parametrize("size", ["-1", "ten", "", "1.5", "0x10"])
def test_bad_sizes_are_bad_request(up, size):
    c = up.online("ups", presence=False)
    try:
        r = slot(c, "f.txt", size)
        assert stanza_error(r) == ("modify", "bad-request"), tostring(r)
        up.assert_healthy(c)
    finally:
        c.close()


def test_missing_size_and_bad_type_are_bad_request(up):
    c = up.online("upm", presence=False)
    try:
        r = c.iq("get", f"<request xmlns='{NS_UPLOAD}' filename='a.txt'/>", to="upload.localhost")
        assert stanza_error(r) == ("modify", "bad-request"), tostring(r)
        r = slot(c, "a.txt", 3, "not a type")
        assert stanza_error(r) == ("modify", "bad-request"), tostring(r)
    finally:
        c.close()


def test_quota_is_resource_constraint(up):
    c = up.online("upq", presence=False)
    try:
        chunk = b"q" * MAX_FILE
        n = QUOTA // MAX_FILE  # files that fit
        for i in range(n):
            upload(up, c, f"q{i}.bin", chunk, "application/octet-stream")
        r = slot(c, "over.bin", MAX_FILE)
        t, cond, err = error_of(r)
        assert (t, cond) == ("wait", "resource-constraint"), tostring(r)
        assert "Quota" in (err.findtext(q("urn:ietf:params:xml:ns:xmpp-stanzas", "text")) or "")
        # What is left still fits; another user is not affected.
        left = QUOTA - n * MAX_FILE
        assert slot(c, "rest.bin", left).get("type") == "result"
        d = up.online("upq2", presence=False)
        assert slot(d, "other.bin", MAX_FILE).get("type") == "result"
        d.close()
    finally:
        c.close()


def test_slot_rate_limit(tmp_path_factory):
    s = upload_server(tmp_path_factory, "uprate", slots_per_minute=3)
    try:
        c = s.online("uprt", presence=False)
        # Refused requests do not count.
        assert stanza_error(slot(c, "", 1))[1] == "not-acceptable"
        for i in range(3):
            assert slot(c, f"r{i}.txt", 1).get("type") == "result"
        r = slot(c, "r3.txt", 1)
        t, cond, err = error_of(r)
        assert (t, cond) == ("wait", "resource-constraint"), tostring(r)
        stamp = err.find(q(NS_UPLOAD, "retry")).get("stamp")
        left = calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")) - time.time()
        assert 0 < left <= 62, stamp
        d = s.online("uprt2", presence=False)
        assert slot(d, "other.txt", 1).get("type") == "result"
        s.assert_healthy(c, d)
        c.close()
        d.close()
    finally:
        s.stop()


# ------------------------------------------------------------------ PUT refusals

def test_put_refusals(up):
    c = up.online("upr", presence=False)
    try:
        data = b"0123456789"
        put_url, headers, get_url = parse_slot(slot(c, "r.txt", len(data), "text/plain"))
        token = headers["Authorization"]
        # No token, a wrong one, a tampered one: 403.
        assert put(up, put_url, data, {}, "text/plain")[0] == 403
        assert put(up, put_url, data, {"Authorization": "Bearer x.y"}, "text/plain")[0] == 403
        tampered = token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB")
        assert put(up, put_url, data, {"Authorization": tampered}, "text/plain")[0] == 403
        # The token of this slot on another slot's URL: 403.
        other_url, _, _ = parse_slot(slot(c, "r.txt", len(data), "text/plain"))
        assert put(up, other_url, data, headers, "text/plain")[0] == 403
        # Wrong size (shorter body and header agreeing; longer), wrong type.
        assert put(up, put_url, data[:5], headers, "text/plain")[0] == 400
        assert put(up, put_url, data + b"x", headers, "text/plain")[0] == 413
        assert put(up, put_url, data, headers, "image/png")[0] == 400
        # None of those stored anything.
        assert https(up, "GET", path_of(get_url))[0] == 404
        # The right PUT, then a second one: 409, the first content stays.
        assert put(up, put_url, data, headers, "text/plain")[0] == 201
        assert put(up, put_url, b"9876543210", headers, "text/plain")[0] == 409
        st, _, body = https(up, "GET", path_of(get_url))
        assert st == 200 and body == data
        up.assert_healthy(c)
    finally:
        c.close()


# ------------------------------------------------------------------ expiry

def test_expired_slot_and_file_expiry(tmp_path_factory):
    s = upload_server(tmp_path_factory, "upexp", slot_lifetime_secs=2, expire_after_secs=3,
                      cleanup_interval_secs=1, quota_bytes=MAX_FILE)
    try:
        c = s.online("upx", presence=False)
        data = b"e" * MAX_FILE
        # A slot not used in time: 410 Gone.
        late_url, late_headers, _ = parse_slot(slot(c, "late.bin", 4))
        # A file that fills the quota.
        _, _, get_url = upload(s, c, "full.bin", data, "application/octet-stream")
        assert https(s, "GET", path_of(get_url))[0] == 200
        r = slot(c, "more.bin", 1)
        t, cond, err = error_of(r)
        assert (t, cond) == ("wait", "resource-constraint"), tostring(r)
        retry = err.find(q(NS_UPLOAD, "retry"))
        assert retry is not None and retry.get("stamp", "").endswith("Z"), tostring(r)
        time.sleep(2.5)
        assert put(s, late_url, b"late", late_headers)[0] == 410
        stored = os.path.join(s.data_dir, "upload", path_of(get_url).split("/")[-2])
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if https(s, "GET", path_of(get_url))[0] == 404 and not os.path.exists(stored):
                if slot(c, "again.bin", MAX_FILE).get("type") == "result":
                    break
            time.sleep(0.5)
        else:
            pytest.fail("the expired file was not deleted (or its quota not released):\n" + s.log_tail())
        s.assert_healthy(c)
        c.close()
    finally:
        s.stop()


def test_files_of_a_deleted_account_are_deleted(tmp_path_factory):
    s = upload_server(tmp_path_factory, "updel", expire_after_secs=0, cleanup_interval_secs=1)
    try:
        c = s.online("upd", presence=False)
        keep = s.online("upk", presence=False)
        _, _, gone_url = upload(s, c, "mine.txt", b"of a deleted account")
        _, _, kept_url = upload(s, keep, "kept.txt", b"of an account that stays")
        c.close()
        s.del_user(c.bare)
        stored = os.path.join(s.data_dir, "upload", path_of(gone_url).split("/")[-2])
        deadline = time.monotonic() + 20
        while https(s, "GET", path_of(gone_url))[0] != 404 or os.path.exists(stored):
            assert time.monotonic() < deadline, "file of a deleted account still served:\n" + s.log_tail()
            time.sleep(0.5)
        st, _, body = https(s, "GET", path_of(kept_url))
        assert st == 200 and body == b"of an account that stays"
        keep.close()
    finally:
        s.stop()


def test_file_survives_a_restart(tmp_path_factory):
    s = upload_server(tmp_path_factory, "uprst")
    try:
        c = s.online("uprs", presence=False)
        c_pw, c_bare = c.password, c.bare
        data = b"kept across restarts"
        _, _, get_url = upload(s, c, "keep.txt", data)
        c.close()
        s.restart()
        deadline = time.monotonic() + 20
        while True:
            try:
                st, _, body = https(s, "GET", path_of(get_url))
                break
            except OSError:
                assert time.monotonic() < deadline, s.log_tail()
                time.sleep(0.2)
        assert st == 200 and body == data
        # The slot's token still refuses a second PUT after the restart (the key is kept).
        c = s.login(c_bare, c_pw)
        put_url, headers, _ = parse_slot(slot(c, "n.txt", 2, "text/plain"))
        assert put(s, put_url, b"ok", headers, "text/plain")[0] == 201
        c.close()
    finally:
        s.stop()


# ------------------------------------------------------------------ configuration

def test_off_by_default(default_server):
    """No [upload] section: no service listed, nothing answers for upload.<domain>."""
    s = default_server
    jid, _, pw = s.new_user("updef")
    c = s.login(jid, pw)
    try:
        r = c.iq("get", f"<query xmlns='{NS_ITEMS}'/>", to="localhost")
        assert r.get("type") == "result", tostring(r)
        jids = [i.get("jid") for i in r.find(q(NS_ITEMS, "query")).findall(q(NS_ITEMS, "item"))]
        assert "upload.localhost" not in jids
        r = slot(c, "a.txt", 3)
        assert r.get("type") == "error", tostring(r)
    finally:
        c.close()


@pytest.mark.parametrize("lines, key", [
    (['public_url = "ftp://files.example.org"'], "upload.public_url"),
    (["port = 0"], "upload.port"),
    (['subdomain = "a.b"'], "upload.subdomain"),
    (['secret = "short"'], "upload.secret"),
])
def test_bad_upload_config_is_refused(tmp_path, lines, key):
    from conftest import STARLING_BIN, child_env
    import subprocess
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[upload]\nenabled = true\n" + "\n".join(lines) + "\n")
    r = subprocess.run([STARLING_BIN, "serve", "--data-dir", str(tmp_path / "d"), "--config", str(cfg),
                        "--c2s-port", str(free_port()), "--c2s-tls-port", str(free_port()),
                        "--metrics-port", "0"],
                       capture_output=True, text=True, timeout=30, env=child_env(), stdin=subprocess.DEVNULL)
    assert r.returncode != 0
    assert key in (r.stdout + r.stderr), r.stdout + r.stderr
