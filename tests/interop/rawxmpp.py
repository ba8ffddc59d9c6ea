"""A deliberately small raw-XML XMPP client for black-box tests.

Plain sockets, STARTTLS / direct TLS via ``ssl`` (no certificate checks: the
server under test uses a self-signed certificate), SASL PLAIN and
SCRAM-SHA-1/-256/-512 implemented by hand, resource binding, and a reader that
parses the server's stream incrementally and returns first-level elements
(stanzas, features, SASL replies, stream errors) as ElementTree elements.

Nothing here hides protocol behaviour: every byte sent is under the test's
control (``send_raw``), and every element received can be inspected.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import os
import socket
import ssl
import struct
import time
import xml.etree.ElementTree as ET
from typing import Callable, Optional

NS_STREAM = "http://etherx.jabber.org/streams"
NS_CLIENT = "jabber:client"
NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
NS_SESSION = "urn:ietf:params:xml:ns:xmpp-session"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
NS_STREAMS_ERR = "urn:ietf:params:xml:ns:xmpp-streams"
NS_ROSTER = "jabber:iq:roster"
NS_DELAY = "urn:xmpp:delay"

DEFAULT_TIMEOUT = float(os.environ.get("RAWXMPP_TIMEOUT", "5"))

_ids = itertools.count(1)


def new_id(prefix: str = "t") -> str:
    return f"{prefix}{next(_ids)}-{os.urandom(3).hex()}"


def q(ns: str, name: str) -> str:
    """Clark notation tag."""
    return "{%s}%s" % (ns, name)


def C(name: str) -> str:
    """Tag in the jabber:client namespace."""
    return q(NS_CLIENT, name)


def xml_escape(s: str) -> str:
    return (s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace("'", "&apos;").replace('"', "&quot;"))


def local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def ns_of(tag: str) -> str:
    return tag[1:].split("}", 1)[0] if tag.startswith("{") else ""


def tostring(el: ET.Element) -> str:
    return ET.tostring(el, encoding="unicode")


def bare(jid: str) -> str:
    return jid.split("/", 1)[0]


def stanza_error(el: ET.Element) -> Optional[tuple]:
    """(type, condition) of a stanza of type='error', else None."""
    if el.get("type") != "error":
        return None
    err = el.find(C("error"))
    if err is None:
        return ("?", None)
    cond = None
    for child in err:
        if ns_of(child.tag) == NS_STANZAS and local(child.tag) != "text":
            cond = local(child.tag)
    return (err.get("type"), cond)


class StreamClosed(Exception):
    """The server closed the stream or the TCP connection."""

    def __init__(self, msg: str, stream_error: Optional[str] = None):
        super().__init__(msg)
        self.stream_error = stream_error


class SASLFailure(Exception):
    def __init__(self, condition: str, element: ET.Element):
        super().__init__(f"SASL failure: {condition}")
        self.condition = condition
        self.element = element


class XMPPTimeout(AssertionError):
    pass


class _StreamParser:
    """Incremental parser for one server->client stream (restartable)."""

    def __init__(self):
        self.parser = ET.XMLPullParser(events=("start", "end"))
        self.depth = 0
        self.root = None
        self.header_attrs: Optional[dict] = None
        self.ended = False

    def feed(self, data: bytes):
        out = []
        self.parser.feed(data)
        for ev, el in self.parser.read_events():
            if ev == "start":
                if self.depth == 0:
                    self.root = el
                    self.header_attrs = dict(el.attrib)
                    out.append(("header", el))
                self.depth += 1
            else:
                self.depth -= 1
                if self.depth == 1:
                    out.append(("element", el))
                    try:
                        self.root.remove(el)
                    except ValueError:
                        pass
                elif self.depth == 0:
                    self.ended = True
                    out.append(("end", el))
        return out


def _scram_hash(mech: str):
    return {"SCRAM-SHA-1": hashlib.sha1, "SCRAM-SHA-256": hashlib.sha256,
            "SCRAM-SHA-512": hashlib.sha512}[mech]


def _saslname(s: str) -> str:
    return s.replace("=", "=3D").replace(",", "=2C")


class Client:
    """One raw XMPP client connection."""

    def __init__(self, host: str, port: int, domain: str = "localhost", *,
                 direct_tls: bool = False, source_ip: Optional[str] = None,
                 timeout: float = DEFAULT_TIMEOUT):
        self.host, self.port, self.domain = host, port, domain
        self.direct_tls = direct_tls
        self.source_ip = source_ip
        self.timeout = timeout
        self.sock: Optional[socket.socket] = None
        self.tls = False
        self.parser = _StreamParser()
        self.queue: list = []  # received, not yet consumed first-level elements
        self.closed = False
        self.stream_error: Optional[str] = None  # condition of a received stream error
        self.stream_error_el: Optional[ET.Element] = None
        self.stream_ended = False  # saw </stream:stream>
        self.features: Optional[ET.Element] = None
        self.header: Optional[dict] = None
        self.jid: Optional[str] = None
        self.authenticated = False
        self.log: list = []  # raw bytes received, for failure messages

    # ------------------------------------------------------------ transport
    def _new_socket(self) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if self.source_ip:
            s.bind((self.source_ip, 0))
        return s

    def connect(self) -> "Client":
        s = self._new_socket()
        s.settimeout(self.timeout)
        s.connect((self.host, self.port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = s
        if self.direct_tls:
            self._wrap_tls(alpn=["xmpp-client"])
        return self

    def _wrap_tls(self, alpn=None):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        # (certificate file, key file) to present: a server's, for SASL EXTERNAL
        client_cert = getattr(self, "client_cert", None)
        if client_cert:
            ctx.load_cert_chain(*client_cert)
        if alpn:
            ctx.set_alpn_protocols(alpn)
        self.sock = ctx.wrap_socket(self.sock, server_hostname=self.domain)
        self.sock.settimeout(self.timeout)
        self.tls = True

    def send_raw(self, data) -> None:
        if isinstance(data, str):
            data = data.encode("utf-8")
        self.sock.sendall(data)

    send = send_raw

    def _read_some(self, deadline: float) -> bool:
        """Read one chunk; returns False on timeout. Raises StreamClosed on EOF."""
        if self.closed:
            raise StreamClosed("connection already closed", self.stream_error)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        self.sock.settimeout(min(remaining, 60))
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return False
        except ssl.SSLWantReadError:
            return False
        except (ConnectionResetError, BrokenPipeError, ssl.SSLError, OSError) as e:
            self.closed = True
            raise StreamClosed(f"connection error: {e!r}", self.stream_error)
        if not data:
            self.closed = True
            raise StreamClosed("connection closed by server", self.stream_error)
        self.log.append(data)
        try:
            events = self.parser.feed(data)
        except ET.ParseError as e:
            raise AssertionError(f"server sent non-well-formed XML: {e}: {b''.join(self.log)[-2000:]!r}")
        for kind, el in events:
            if kind == "header":
                self.header = dict(el.attrib)
            elif kind == "end":
                self.stream_ended = True
            else:
                if el.tag == q(NS_STREAM, "error"):
                    self.stream_error_el = el
                    for child in el:
                        if ns_of(child.tag) == NS_STREAMS_ERR and local(child.tag) != "text":
                            self.stream_error = local(child.tag)
                self.queue.append(el)
        return True

    # -------------------------------------------------------------- reading
    def recv(self, pred: Optional[Callable[[ET.Element], bool]] = None,
             timeout: Optional[float] = None, what: str = "element") -> ET.Element:
        """Return (and remove from the queue) the first element matching pred."""
        pred = pred or (lambda e: True)
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            for i, el in enumerate(self.queue):
                if pred(el):
                    return self.queue.pop(i)
            if self.closed or self.stream_ended:
                if self.stream_ended and not self.closed:
                    # give the server a moment to close TCP; nothing more will come
                    pass
                raise StreamClosed(f"stream closed while waiting for {what}; "
                                   f"stream_error={self.stream_error}; queue="
                                   f"{[tostring(e)[:300] for e in self.queue]}", self.stream_error)
            if not self._read_some(deadline):
                raise XMPPTimeout(f"timed out waiting for {what}; queue="
                                  f"{[tostring(e)[:300] for e in self.queue]}")

    def recv_stanza(self, name: str, timeout=None, **attrs) -> ET.Element:
        def pred(e):
            if e.tag != C(name):
                return False
            return all(e.get(k.rstrip("_")) == v for k, v in attrs.items())
        return self.recv(pred, timeout, what=f"<{name} {attrs}>")

    def expect_nothing(self, pred=None, timeout: float = 0.7, what="element"):
        """Assert that no element matching pred arrives within timeout."""
        try:
            el = self.recv(pred, timeout=timeout, what=what)
        except XMPPTimeout:
            return
        raise AssertionError(f"unexpected {what}: {tostring(el)}")

    def drain(self, timeout: float = 0.3) -> list:
        """Consume everything that arrives within timeout."""
        out = []
        try:
            while True:
                out.append(self.recv(timeout=timeout))
        except (XMPPTimeout, StreamClosed):
            pass
        return out

    def wait_closed(self, timeout: float = 5.0) -> Optional[str]:
        """Read until the server closes the connection; return the stream error condition.

        Fails if the connection is still open after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                self._read_some(deadline)
        except StreamClosed:
            return self.stream_error
        raise AssertionError(f"server did not close the connection within {timeout}s; "
                             f"stream_error={self.stream_error}, received={b''.join(self.log)[-1500:]!r}")

    def expect_stream_error(self, timeout: float = 5.0) -> str:
        """Wait for a stream error (the server must send one, then close)."""
        deadline = time.monotonic() + timeout
        try:
            while self.stream_error is None and time.monotonic() < deadline:
                self._read_some(deadline)
        except StreamClosed:
            pass
        if self.stream_error is None:
            raise AssertionError(f"no stream error within {timeout}s; closed={self.closed}; "
                                 f"received={b''.join(self.log)[-1500:]!r}")
        return self.stream_error

    # ------------------------------------------------------------ streams
    def stream_header(self, to: Optional[str] = None, version: Optional[str] = "1.0",
                      ns: str = NS_CLIENT, stream_ns: str = NS_STREAM, extra: str = "",
                      xml_decl: bool = True) -> str:
        to = self.domain if to is None else to
        parts = ["<?xml version='1.0'?>" if xml_decl else "", "<stream:stream"]
        if to:
            parts.append(f" to='{to}'")
        if version is not None:
            parts.append(f" version='{version}'")
        parts.append(f" xml:lang='en' xmlns='{ns}' xmlns:stream='{stream_ns}'{extra}>")
        return "".join(parts)

    def open_stream(self, **kw) -> ET.Element:
        """Send a stream header; wait for the server's header and features."""
        self.parser = _StreamParser()
        self.header = None
        self.stream_ended = False
        self.send_raw(self.stream_header(**kw))
        self.features = self.recv(lambda e: e.tag == q(NS_STREAM, "features"), what="stream features")
        return self.features

    def feature(self, ns: str, name: str) -> Optional[ET.Element]:
        return None if self.features is None else self.features.find(q(ns, name))

    def mechanisms(self) -> list:
        m = self.feature(NS_SASL, "mechanisms")
        return [] if m is None else [x.text for x in m.findall(q(NS_SASL, "mechanism"))]

    def starttls(self) -> ET.Element:
        self.send_raw(f"<starttls xmlns='{NS_TLS}'/>")
        el = self.recv(lambda e: ns_of(e.tag) == NS_TLS, what="starttls reply")
        assert local(el.tag) == "proceed", tostring(el)
        self._wrap_tls()
        return self.open_stream()

    def start(self) -> "Client":
        """TCP connect + stream + STARTTLS (or direct TLS) -> ready for SASL."""
        self.connect()
        self.open_stream()
        if not self.tls:
            self.starttls()
        return self

    # --------------------------------------------------------------- SASL
    def _sasl_reply(self) -> ET.Element:
        return self.recv(lambda e: ns_of(e.tag) == NS_SASL, what="SASL reply")

    def _sasl_check(self, el) -> ET.Element:
        if local(el.tag) == "failure":
            cond = None
            for ch in el:
                if local(ch.tag) != "text":
                    cond = local(ch.tag)
            raise SASLFailure(cond, el)
        return el

    def auth_plain(self, user: str, password: str, authzid: str = "") -> None:
        payload = base64.b64encode(f"{authzid}\0{user}\0{password}".encode()).decode()
        self.send_raw(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{payload}</auth>")
        el = self._sasl_check(self._sasl_reply())
        assert local(el.tag) == "success", tostring(el)
        self.authenticated = True

    def auth_scram(self, user: str, password: str, mech: str = "SCRAM-SHA-1", *,
                   authzid: str = "", tamper_proof: bool = False, tamper_nonce: bool = False,
                   abort_after_first: bool = False) -> None:
        H = _scram_hash(mech)
        cnonce = base64.b64encode(os.urandom(18)).decode()
        gs2 = "n," + (f"a={_saslname(authzid)}" if authzid else "") + ","
        cfb = f"n={_saslname(user)},r={cnonce}"
        self.send_raw(f"<auth xmlns='{NS_SASL}' mechanism='{mech}'>"
                      f"{base64.b64encode((gs2 + cfb).encode()).decode()}</auth>")
        el = self._sasl_check(self._sasl_reply())
        assert local(el.tag) == "challenge", tostring(el)
        sf = base64.b64decode(el.text or "").decode()
        attrs = dict(kv.split("=", 1) for kv in sf.split(","))
        nonce, salt, it = attrs["r"], base64.b64decode(attrs["s"]), int(attrs["i"])
        self.scram_params = {"iterations": it, "salt": salt, "nonce": nonce}
        assert nonce.startswith(cnonce), f"server nonce {nonce!r} does not extend ours {cnonce!r}"
        if abort_after_first:
            self.send_raw(f"<abort xmlns='{NS_SASL}'/>")
            self._sasl_check(self._sasl_reply())
            raise AssertionError("server answered abort with something other than failure")
        if tamper_nonce:
            nonce = nonce + "x"
        cfwp = f"c={base64.b64encode(gs2.encode()).decode()},r={nonce}"
        salted = hashlib.pbkdf2_hmac(H().name, password.encode(), salt, it)
        ckey = hmac.new(salted, b"Client Key", H).digest()
        skey = H(ckey).digest()
        authmsg = f"{cfb},{sf},{cfwp}".encode()
        csig = hmac.new(skey, authmsg, H).digest()
        proof = bytes(a ^ b for a, b in zip(ckey, csig))
        if tamper_proof:
            proof = bytes([proof[0] ^ 0x01]) + proof[1:]
        cf = f"{cfwp},p={base64.b64encode(proof).decode()}"
        self.send_raw(f"<response xmlns='{NS_SASL}'>{base64.b64encode(cf.encode()).decode()}</response>")
        el = self._sasl_check(self._sasl_reply())
        if local(el.tag) == "challenge":  # server-final in a challenge; answer with empty response
            final = el.text
            self.send_raw(f"<response xmlns='{NS_SASL}'/>")
            el = self._sasl_check(self._sasl_reply())
        else:
            final = el.text
        assert local(el.tag) == "success", tostring(el)
        server_key = hmac.new(salted, b"Server Key", H).digest()
        ssig = base64.b64encode(hmac.new(server_key, authmsg, H).digest()).decode()
        got = base64.b64decode(final or "").decode()
        assert got == f"v={ssig}", f"server signature mismatch: {got!r}"
        self.authenticated = True

    def auth(self, user: str, password: str, mech: str = "SCRAM-SHA-1", **kw) -> None:
        if mech == "PLAIN":
            self.auth_plain(user, password, **kw)
        else:
            self.auth_scram(user, password, mech, **kw)
        self.open_stream()

    # --------------------------------------------------------------- bind
    def bind(self, resource: Optional[str] = None, expect_error: bool = False):
        iid = new_id("bind")
        inner = f"<resource>{xml_escape(resource)}</resource>" if resource is not None else ""
        self.send_raw(f"<iq type='set' id='{iid}'><bind xmlns='{NS_BIND}'>{inner}</bind></iq>")
        el = self.recv(lambda e: e.tag == C("iq") and e.get("id") == iid, what="bind result")
        if expect_error:
            return el
        assert el.get("type") == "result", tostring(el)
        self.jid = el.find(f"{q(NS_BIND, 'bind')}/{q(NS_BIND, 'jid')}").text
        return self.jid

    def session(self) -> ET.Element:
        return self.iq("set", f"<session xmlns='{NS_SESSION}'/>")

    def login(self, user: str, password: str, resource: Optional[str] = None,
              mech: str = "SCRAM-SHA-1", presence: bool = False, priority: Optional[int] = None) -> "Client":
        self.start()
        self.auth(user, password, mech)
        self.bind(resource)
        if presence or priority is not None:
            # like a real client: request the roster (becoming an "interested resource",
            # RFC 6121 2.1.6) before sending initial presence
            self.iq("get", "<query xmlns='jabber:iq:roster'/>")
            self.presence(priority=priority)
            # RFC 6121 4.2.2: the server reflects initial presence to the sending resource;
            # waiting for it means the session is available before the test goes on
            self.recv(lambda e: e.tag == C("presence") and e.get("from") == self.jid and
                      e.get("type") is None, what="own initial presence")
        return self

    # ------------------------------------------------------------ stanzas
    def iq(self, type_: str, payload: str = "", to: Optional[str] = None,
           timeout: Optional[float] = None, iid: Optional[str] = None) -> ET.Element:
        iid = iid or new_id("iq")
        to_attr = f" to='{to}'" if to else ""
        self.send_raw(f"<iq type='{type_}' id='{iid}'{to_attr}>{payload}</iq>")
        return self.recv(lambda e: e.tag == C("iq") and e.get("id") == iid and
                         e.get("type") in ("result", "error"), timeout, what=f"iq reply {iid}")

    def message(self, to: str, body: Optional[str] = "hi", type_: Optional[str] = "chat",
                extra: str = "", mid: Optional[str] = None) -> str:
        mid = mid or new_id("m")
        t = f" type='{type_}'" if type_ else ""
        b = f"<body>{xml_escape(body)}</body>" if body is not None else ""
        self.send_raw(f"<message to='{to}' id='{mid}'{t}>{b}{extra}</message>")
        return mid

    def presence(self, to: Optional[str] = None, type_: Optional[str] = None,
                 priority: Optional[int] = None, extra: str = "", status: Optional[str] = None) -> None:
        attrs = (f" to='{to}'" if to else "") + (f" type='{type_}'" if type_ else "")
        inner = (f"<priority>{priority}</priority>" if priority is not None else "")
        inner += f"<status>{xml_escape(status)}</status>" if status else ""
        self.send_raw(f"<presence{attrs}>{inner}{extra}</presence>" if inner or extra
                      else f"<presence{attrs}/>")

    def ping_server(self, timeout=None) -> ET.Element:
        return self.iq("get", "<ping xmlns='urn:xmpp:ping'/>", to=bare(self.jid).split("@")[-1],
                       timeout=timeout)

    # ------------------------------------------------------------ closing
    def close(self, timeout: float = 1.0) -> None:
        if self.sock is None or self.closed:
            return
        try:
            self.send_raw("</stream:stream>")
            deadline = time.monotonic() + timeout
            while not self.stream_ended and time.monotonic() < deadline:
                if not self._read_some(deadline):
                    break
        except (StreamClosed, OSError):
            pass
        self.shutdown()

    def shutdown(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
        self.closed = True

    def drop(self) -> None:
        """Abort the TCP connection with RST, no closing stream tag."""
        if self.sock is None:
            return
        raw = self.sock
        if isinstance(raw, ssl.SSLSocket):
            raw = socket.socket(fileno=raw.detach())
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        raw.close()
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.shutdown()
