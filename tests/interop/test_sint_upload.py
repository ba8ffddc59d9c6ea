"""Ports of the XEP-0363 HTTP File Upload interop tests: Smack's HttpFileUploadIntegrationTest
(httpFileUploadTest) and the server extensions' HttpFileUploadExtIntegrationTest (slot shape:
GET / PUT URL present, https, RFC 3986, non-ASCII percent-encoded, PUT header names; the
<retry/> stamp of a rate-limited request).

Upload is off by default (it opens an HTTPS port), so the fixture turns it on as an operator
would, with the default limits (10 MiB files, 30 slots a minute); Smack's discovery is done
as HttpFileUploadManager.discoverUploadService does it: disco#items of the domain, then
disco#info of each item for urn:xmpp:http:upload:0 and its max-file-size.
"""

import os
import re
import urllib.parse
from datetime import datetime

import pytest

from rawxmpp import q, stanza_error, tostring
from test_sint_helpers import rnd
from test_upload import NS_DATA, NS_INFO, NS_ITEMS, NS_UPLOAD, https, path_of, request_xml, upload_server

pytestmark = [pytest.mark.starling_only, pytest.mark.timeout(120)]

FILE_SIZE = 1024 * 128  # Smack's FILE_SIZE


@pytest.fixture(scope="module")
def up(tmp_path_factory):
    s = upload_server(tmp_path_factory, "sintupload", max_file_size=10485760, quota_bytes=104857600)
    yield s
    s.stop()


def discover(c, domain="localhost"):
    """HttpFileUploadManager.discoverUploadService: (address, max-file-size or None), or
    None when no item of the domain offers the feature."""
    r = c.iq("get", f"<query xmlns='{NS_ITEMS}'/>", to=domain)
    assert r.get("type") == "result", tostring(r)
    for item in r.iter(q(NS_ITEMS, "item")):
        jid = item.get("jid")
        info = c.iq("get", f"<query xmlns='{NS_INFO}'/>", to=jid)
        if info.get("type") != "result":
            continue
        feats = {f.get("var") for f in info.iter(q(NS_INFO, "feature"))}
        if NS_UPLOAD not in feats:
            continue
        size = None
        for x in info.iter(q(NS_DATA, "x")):
            fields = {f.get("var"): f.findtext(q(NS_DATA, "value")) for f in x.findall(q(NS_DATA, "field"))}
            if fields.get("FORM_TYPE") == NS_UPLOAD and fields.get("max-file-size"):
                size = int(fields["max-file-size"])
        return jid, size
    return None


def service(up, c):
    found = discover(c)
    if found is None:
        pytest.fail("no XEP-0363 service discovered although [upload] is enabled")
    return found[0]


def raw_slot(c, svc, filename, size):
    r = c.iq("get", request_xml(filename, size), to=svc)
    assert r.get("type") == "result", tostring(r)
    s = r.find(q(NS_UPLOAD, "slot"))
    assert s is not None, tostring(r)
    return s


def urls(s):
    put, get = s.find(q(NS_UPLOAD, "put")), s.find(q(NS_UPLOAD, "get"))
    return (put.get("url") if put is not None else None), (get.get("url") if get is not None else None)


def test_http_file_upload(up, clients):
    """HttpFileUploadIntegrationTest.httpFileUploadTest: a 128 KiB random file (the service
    must accept that size, else 'not possible') uploaded through the slot's PUT URL comes back
    byte for byte from its GET URL (XEP-0363 4, 5)."""
    c = clients.add(up.online("sintup"))
    svc, max_size = discover(c)
    assert max_size is None or max_size >= FILE_SIZE, max_size
    data = os.urandom(FILE_SIZE)
    s = raw_slot(c, svc, "smack-upload.bin", FILE_SIZE)
    put_url, get_url = urls(s)
    headers = {h.get("name"): h.text or "" for h in s.find(q(NS_UPLOAD, "put")).findall(q(NS_UPLOAD, "header"))}
    headers["Content-Length"] = str(FILE_SIZE)
    # Smack's HttpURLConnection sends the type it guesses; application/octet-stream is what
    # it uses for unknown ones
    headers["Content-Type"] = "application/octet-stream"
    st, _, body = https(up, "PUT", path_of(put_url), body=data, headers=headers)
    assert st in (200, 201), (st, body)
    st, _, got = https(up, "GET", path_of(get_url))
    assert st == 200 and got == data


def test_slot_response_contains_get_and_put(up, clients):
    """HttpFileUploadExtIntegrationTest.testSlotResponseContainsGet / ...ContainsPut (XEP-0363
    4: the service responds with a PUT and a GET URL wrapped by a <slot/>)."""
    c = clients.add(up.online("sintup"))
    svc = service(up, c)
    put_url, get_url = urls(raw_slot(c, svc, f"testfile-{rnd(5)}.txt", 36))
    assert get_url, "no GET URL"
    assert put_url, "no PUT URL"


def test_slot_urls_provide_tls(up, clients):
    """...testSlotResponseGetUrlProvideTLS / ...PutUrlProvideTLS (XEP-0363 4: the host MUST
    provide TLS): both URLs start with https."""
    c = clients.add(up.online("sintup"))
    svc = service(up, c)
    put_url, get_url = urls(raw_slot(c, svc, f"testfile-{rnd(5)}.txt", 36))
    assert get_url[:5] == "https", get_url
    assert put_url[:5] == "https", put_url


# RFC 3986 appendix B's generic URI, with the character classes of its section 2
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:(//([A-Za-z0-9\-._~!$&'()*+,;=:%@\[\]]*))?"
                  r"([A-Za-z0-9\-._~!$&'()*+,;=:@/%]*)(\?[A-Za-z0-9\-._~!$&'()*+,;=:@/?%]*)?"
                  r"(#[A-Za-z0-9\-._~!$&'()*+,;=:@/?%]*)?$")


def _rfc3986(url):
    if not _URI.match(url):
        return False
    # every '%' starts a percent-encoded octet
    return all(re.fullmatch(r"[0-9A-Fa-f]{2}", url[i + 1:i + 3]) for i, ch in enumerate(url) if ch == "%")


def test_slot_urls_adhere_to_rfc3986(up, clients):
    """...testSlotResponseGetUrlAdhereToRFC3986 / ...PutUrlAdhereToRFC3986 (XEP-0363 4: both
    HTTPS URLs MUST adhere to RFC 3986), also for a name that needs escaping."""
    c = clients.add(up.online("sintup"))
    svc = service(up, c)
    for name in (f"testfile-{rnd(5)}.txt", "très cool.txt", "a#b?c%d e.txt"):
        put_url, get_url = urls(raw_slot(c, svc, name, 36))
        assert _rfc3986(get_url), get_url
        assert _rfc3986(put_url), put_url


def test_slot_urls_are_percent_encoded(up, clients):
    """...testSlotResponseGetUrlIsPercentEncoded / ...PutUrlIsPercentEncoded (XEP-0363 4:
    non-ASCII characters MUST be percent-encoded): for 'très cool.txt' both URLs are ASCII
    (Smack calls it 'not possible' only when nothing in the URL needed encoding)."""
    c = clients.add(up.online("sintup"))
    svc = service(up, c)
    put_url, get_url = urls(raw_slot(c, svc, "très cool.txt", 36))
    for u in (get_url, put_url):
        assert u.isascii(), u
        if urllib.parse.unquote(u) == u:
            pytest.skip("Smack marks this 'not possible': the URL had nothing that needed percent-encoding")


def test_put_headers_have_valid_names(up, clients):
    """...testPutHeadersHaveNameAttribute / ...testPutHeadersHaveValidNames (XEP-0363 4: each
    <header/> MUST have a name; only Authorization, Cookie and Expires are allowed,
    case-insensitively)."""
    c = clients.add(up.online("sintup"))
    svc = service(up, c)
    s = raw_slot(c, svc, "très cool.txt", 36)
    headers = s.find(q(NS_UPLOAD, "put")).findall(q(NS_UPLOAD, "header"))
    if not headers:
        pytest.skip("Smack marks this 'not possible': the slot has no PUT headers")
    for h in headers:
        assert h.get("name"), tostring(s)
        assert h.get("name").lower() in {"authorization", "cookie", "expires"}, tostring(s)


@pytest.mark.parametrize("per_minute", [0, 5], ids=["default-limit", "limit-5"])
def test_retry_error(tmp_path_factory, clients, per_minute):
    """...testRetryError (XEP-0363 5: a <retry/> MUST carry a 'stamp' in the XEP-0082
    date-time format, in UTC). Ten slot requests in a row: with the default limit (30 a
    minute) none is refused, which Smack calls 'not possible'; with an operator's limit of 5
    a minute the sixth is refused with a <retry/> whose stamp is a UTC date-time."""
    cfg = {} if per_minute == 0 else {"slots_per_minute": per_minute}
    s = upload_server(tmp_path_factory, f"sintupretry{per_minute}", max_file_size=10485760, **cfg)
    try:
        c = clients.add(s.online("sintup"))
        svc = discover(c)[0]
        refused = None
        for i in range(10):
            r = c.iq("get", request_xml(f"test-ratelimit-{rnd(4)}.txt", 80), to=svc)
            if r.get("type") == "error":
                refused = (i, r)
                break
        if per_minute == 0:
            assert refused is None, tostring(refused[1])
            return  # Smack: 'not possible' (no error to assert on); nothing was refused, as configured
        assert refused is not None and refused[0] == per_minute, refused and tostring(refused[1])
        r = refused[1]
        assert stanza_error(r)[1] == "resource-constraint", tostring(r)
        retry = r.find("{jabber:client}error").find(q(NS_UPLOAD, "retry"))
        assert retry is not None, tostring(r)
        stamp = retry.get("stamp")
        assert stamp, tostring(r)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", stamp), stamp
        datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        assert any(stamp.endswith(z) for z in ("z", "Z", "+00:00", "-00:00")), stamp
    finally:
        s.stop()
