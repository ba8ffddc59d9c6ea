"""Ports of Smack's IoT, JET and Jingle transport interop tests (igniterealtime/Smack,
smack-integration-test, org.jivesoftware.smackx):

- iot.IoTControlIntegrationTest.controlTest (XEP-0325), iot.IoTDataIntegrationTest.dataTest
  (XEP-0323): client-to-client IQs (and, for the data, a message) between two mutually
  subscribed accounts. conOne plays Smack's IoTControlManager / IoTDataManager with the
  installed Thing; conTwo plays the manager that controls / reads it. Smack's IoT managers
  only answer requests from 'friends' (IoTManager.isAllowed: the requester can see the thing's
  presence in the thing's roster, Roster.isSubscribedToMyPresence), so the roster the server
  keeps decides whether the request is answered at all.
- iot.IoTDiscoveryIntegrationTest.registerClaimAndUnregisterThing (XEP-0347): 'not possible'
  unless a Thing Registry is found (the domain or one of its disco#items advertises
  urn:xmpp:iot:discovery); a registry is a separate service, which Starling does not offer.
- jet.JetIntegrationTest.JingleEncryptedFileTransferTest (XEP-0391 over XEP-0234 / OMEMO):
  AbstractOmemoIntegrationTest makes it 'not possible' unless the domain's disco#info lists
  http://jabber.org/protocol/pubsub (OmemoManager.serverSupportsOmemo); Starling advertises
  PEP on the account's bare JID (XEP-0163) and not on the domain. The server side of the OMEMO
  steps is in test_sint_omemo.py; the encryption and the Jingle file transfer are client work.
- jingle.transport.JingleTransportIntegrationTest.JingleIBBTest / JingleS5BTest: both Jingle
  sessions are built locally in the Java test (no session-initiate / accept on the wire); what
  goes through the server is, for IBB, the XEP-0047 <open/> and <data/> IQs between the two
  full JIDs, and for SOCKS5 the proxy discovery (disco#items of the domain, disco#info of each
  item, as Socks5BytestreamManager.determineProxies) and the XEP-0260 transport-info IQs
  (candidate-used both ways, candidate activated), which Smack's JingleManager only accepts
  from the session's peer full JID. The SOCKS5 data goes through Smack's local Socks5Proxy
  (one per JVM, shared by conOne and conTwo), played here by a local SOCKS5 server.
"""

import base64
import datetime
import hashlib
import os
import random
import socket
import threading
import time

import pytest

from im import make_mutual, roster_get, roster_items, roster_set
from rawxmpp import C, XMPPTimeout, bare, local, new_id, q, tostring
from test_proxy65 import recv_exact
from test_sint_helpers import rnd

NS_CONTROL = "urn:xmpp:iot:control"
NS_SENSORDATA = "urn:xmpp:iot:sensordata"
NS_DISCOVERY = "urn:xmpp:iot:discovery"
NS_INFO = "http://jabber.org/protocol/disco#info"
NS_ITEMS = "http://jabber.org/protocol/disco#items"
NS_PUBSUB = "http://jabber.org/protocol/pubsub"
NS_IBB = "http://jabber.org/protocol/ibb"
NS_BS = "http://jabber.org/protocol/bytestreams"
NS_JINGLE = "urn:xmpp:jingle:1"
NS_S5B = "urn:xmpp:jingle:transports:s5b:1"


def new_run_id():
    """The SINT testRunId (a short random string), used as the data field / control name."""
    return rnd(5)


def is_iq(iid, types=("result", "error")):
    return lambda e: e.tag == C("iq") and e.get("id") == iid and e.get("type") in types


def arrives(src, dst, iid, what):
    """The IQ src sent with id iid, as dst receives it; on a timeout, src's answer (an error
    from the server, if any) goes into the failure message."""
    try:
        return dst.recv(is_iq(iid, ("get", "set")), 5, what=what)
    except XMPPTimeout:
        got = [tostring(e) for e in src.queue if e.tag == C("iq") and e.get("id") == iid]
        raise AssertionError(f"{what} did not arrive; the sender got: {got}")


def is_my_friend(thing, jid):
    """IoTProvisioningManager.isMyFriend = Roster.isSubscribedToMyPresence on the thing's roster
    (the roster as the server keeps it: subscription 'from' or 'both')."""
    item = roster_items(roster_get(thing)).get(bare(jid))
    return item is not None and item.get("subscription") in ("from", "both")


def not_in_each_others_roster(one, two):
    """IntegrationTestRosterUtil.ensureBothAccountsAreNotInEachOthersRoster (tear-down)."""
    for x, y in ((one, two), (two, one)):
        try:
            roster_set(x, bare(y.jid), remove=True)
        except Exception:
            pass


# ------------------------------------------------------------------------------- XEP-0325

def test_control(server, clients):
    """IoTControlIntegrationTest.controlTest (XEP-0325 §2.1 'Control using IQ'): conOne provides a
    thing, conTwo (mutually subscribed) sends <set xmlns='urn:xmpp:iot:control'><bool
    name=testRunId value='true'/></set> to conOne's full JID (IoTControlManager.setUsingIq); the
    thing's request handler sees it from conTwo's full JID with that data (the sync point), and
    conTwo gets the <setResponse/> result (assertNotNull(response))."""
    one = clients.add(server.online("sintiotc1"))
    two = clients.add(server.online("sintiotc2"))
    run_id = new_run_id()
    signalled = False
    try:
        make_mutual(one, two)
        iid = new_id("iotset")
        two.send_raw(f"<iq type='set' id='{iid}' to='{one.jid}'><set xmlns='{NS_CONTROL}'>"
                     f"<bool name='{run_id}' value='true'/></set></iq>")
        req = arrives(two, one, iid, "the IoT set request at conOne")
        # IoTManager.IoTIqRequestHandler: a request from a non-friend is ignored (no response)
        assert is_my_friend(one, req.get("from")), (
            f"conOne's roster does not show {req.get('from')} subscribed to its presence: Smack's IoTControlManager "
            "ignores the request, conTwo gets no response")
        # the Thing's ThingControlRequest.processRequest
        if req.get("from") == two.jid:
            for data in req.find(q(NS_CONTROL, "set")):
                if local(data.tag) == "bool" and data.get("name") == run_id and data.get("value") in ("true", "1"):
                    signalled = True
                    break
        one.send_raw(f"<iq type='result' id='{iid}' to='{req.get('from')}'><setResponse xmlns='{NS_CONTROL}'/></iq>")
        response = two.recv(is_iq(iid), 5, what="the IoTSetResponse")
        assert response.get("type") == "result" and response.find(q(NS_CONTROL, "setResponse")) is not None, \
            tostring(response)
    finally:
        not_in_each_others_roster(one, two)
    assert signalled, ("the thing's control request handler was not called with a 'true' bool named "
                       f"{run_id} from {two.jid}: " + tostring(req))


# ------------------------------------------------------------------------------- XEP-0323

def fields_of(e, seqnr):
    if e.tag != C("message"):
        return None
    f = e.find(q(NS_SENSORDATA, "fields"))
    if f is None or f.get("seqnr") is None or int(f.get("seqnr")) != seqnr:
        return None
    return f


def test_data(server, clients):
    """IoTDataIntegrationTest.dataTest (XEP-0323 §3.1 'Read-out': an IQ-get <req
    momentary='true'/> is accepted with <accepted/>, the fields come in a message with
    done='true'): conOne's thing answers a momentary read-out with one int field named
    testRunId; conTwo (IoTDataManager.requestMomentaryValuesReadOut, mutually subscribed) gets
    exactly one <fields/> with one <node/>, one <timestamp/>, one data field, an int with that
    name and value."""
    one = clients.add(server.online("sintiotd1"))
    two = clients.add(server.online("sintiotd2"))
    run_id = new_run_id()
    value = random.randint(-2 ** 31, 2 ** 31 - 1)
    seqnr = 1  # IoTDataManager.nextSeqNr.incrementAndGet() of a fresh manager
    try:
        make_mutual(one, two)
        iid = new_id("iotreq")
        two.send_raw(f"<iq type='get' id='{iid}' to='{one.jid}'><req xmlns='{NS_SENSORDATA}' seqnr='{seqnr}' "
                     "momentary='true'/></iq>")
        req = arrives(two, one, iid, "the IoT read-out request at conOne")
        assert is_my_friend(one, req.get("from")), (
            f"conOne's roster does not show {req.get('from')} subscribed to its presence: Smack's IoTDataManager "
            "ignores the request, conTwo gets no response")
        r = req.find(q(NS_SENSORDATA, "req"))
        assert r.get("momentary") in ("true", "1"), tostring(req)  # otherwise Smack does not answer
        # the thing's momentaryReadOutRequest callback sends the fields before the handler returns <accepted/>
        stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")
        one.send_raw(f"<message to='{req.get('from')}' id='{new_id('iotdata')}'><fields xmlns='{NS_SENSORDATA}' "
                     f"seqnr='{r.get('seqnr')}' done='true'><node><timestamp value='{stamp}'>"
                     f"<int name='{run_id}' value='{value}'/></timestamp></node></fields></message>")
        one.send_raw(f"<iq type='result' id='{iid}' to='{req.get('from')}'><accepted xmlns='{NS_SENSORDATA}' "
                     f"seqnr='{r.get('seqnr')}'/></iq>")
        accepted = two.recv(is_iq(iid), 5, what="the read-out acceptance")
        assert accepted.get("type") == "result", tostring(accepted)  # nextResultOrThrow
        # the done collector (its timeout reset by each data message), then the data collector's messages
        values = []
        deadline = time.monotonic() + 5
        while not any(f.get("done") in ("true", "1") for f in values):
            try:
                msg = two.recv(lambda e: fields_of(e, seqnr) is not None, max(0.01, deadline - time.monotonic()),
                               what="the read-out fields")
            except XMPPTimeout:
                break
            values.append(fields_of(msg, seqnr))
            deadline = time.monotonic() + 5
    finally:
        not_in_each_others_roster(one, two)
    assert len(values) == 1, f"An unexpected amount of momentary values was received by {two.jid}: {len(values)}"
    nodes = values[0].findall(q(NS_SENSORDATA, "node"))
    assert len(nodes) == 1, "The momentary value contains an unexpected amount of nodes: " + tostring(values[0])
    timestamps = nodes[0].findall(q(NS_SENSORDATA, "timestamp"))
    assert len(timestamps) == 1, "The node contains an unexpected amount of timestamps: " + tostring(values[0])
    fields = [f for f in timestamps[0] if local(f.tag) in ("int", "boolean")]  # IoTFieldsExtensionProvider
    assert len(fields) == 1, "The timestamp contains an unexpected amount of data fields: " + tostring(values[0])
    assert local(fields[0].tag) == "int", "The data field is not an IntField: " + tostring(fields[0])
    assert fields[0].get("name") == run_id, "Unexpected name in the data field: " + tostring(fields[0])
    assert int(fields[0].get("value")) == value, "Unexpected value in the data field: " + tostring(fields[0])


# ------------------------------------------------------------------------------- XEP-0347

def supports(c, jid, feature):
    r = c.iq("get", f"<query xmlns='{NS_INFO}'/>", to=jid)
    return r.get("type") == "result" and feature in {f.get("var") for f in r.iter(q(NS_INFO, "feature"))}


def find_registry(c, domain):
    """IoTDiscoveryManager.findRegistry: ServiceDiscoveryManager.findServicesDiscoverInfo(
    urn:xmpp:iot:discovery, stopOnFirst, ...): the domain itself, then each of its disco#items."""
    if supports(c, domain, NS_DISCOVERY):
        return domain
    items = c.iq("get", f"<query xmlns='{NS_ITEMS}'/>", to=domain)
    for item in items.iter(q(NS_ITEMS, "item")):
        if supports(c, item.get("jid"), NS_DISCOVERY):
            return item.get("jid")
    return None


def registry_iq(c, registry, payload):
    r = c.iq("set", payload, to=registry)
    assert r.get("type") == "result", tostring(r)  # nextResultOrThrow
    return r


def test_register_claim_and_unregister_thing(server, clients):
    """IoTDiscoveryIntegrationTest.registerClaimAndUnregisterThing (XEP-0347 §3.5 'Finding Thing
    Registry', §3.6 register, §3.9 claim, §3.17 disown, §3.16 unregister): 'not possible' unless
    conOne finds a registry. With one, conOne registers a thing (KEY, SN, MAN, MODEL, V meta
    tags; a <claimed/> result means 'already claimed': unregister and retry), conTwo claims it
    with <mine/>, the <claimed/> names conOne's bare JID, conTwo disowns it, conOne unregisters."""
    one = clients.add(server.online("sintiotr1"))
    two = clients.add(server.online("sintiotr2"))
    registry = find_registry(one, server.domain)
    if registry is None:
        # A XEP-0347 registry is a separate entity, which Starling does not host.
        pytest.skip("Smack marks this 'not possible': Could not find IoT Registry (neither the domain nor its "
                    f"disco#items advertise {NS_DISCOVERY})")
    tags = (f"<str name='KEY' value='{rnd(12)}'/><str name='SN' value='{rnd(12)}'/>"
            "<str name='MAN' value='Ignite Realtime'/><str name='MODEL' value='Smack'/><num name='V' value='0.1'/>")
    for c in (one, two):  # interactWithRegistry: sendFriendshipRequestIfRequired
        c.send_raw(f"<presence type='subscribe' to='{bare(registry)}'/>")
    for attempt in range(5):
        r = registry_iq(one, registry, f"<register xmlns='{NS_DISCOVERY}'>{tags}</register>")
        if r.find(q(NS_DISCOVERY, "claimed")) is None:
            break
        registry_iq(one, registry, f"<unregister xmlns='{NS_DISCOVERY}'/>")
    else:
        raise AssertionError("Could no register thing")
    claimed = registry_iq(two, registry, f"<mine xmlns='{NS_DISCOVERY}'>{tags}</mine>").find(q(NS_DISCOVERY, "claimed"))
    assert claimed is not None and claimed.get("jid") == bare(one.jid), tostring(claimed)
    two.send_raw(f"<presence type='subscribe' to='{bare(claimed.get('jid'))}'/>")  # sendFriendshipRequest
    registry_iq(two, registry, f"<disown xmlns='{NS_DISCOVERY}' jid='{claimed.get('jid')}'/>")
    registry_iq(one, registry, f"<unregister xmlns='{NS_DISCOVERY}'/>")


# ------------------------------------------------------------------------------- XEP-0391

def test_jingle_encrypted_file_transfer(server, clients):
    """JetIntegrationTest.JingleEncryptedFileTransferTest (XEP-0391 JET with OMEMO over XEP-0234):
    AbstractOmemoIntegrationTest's constructor makes the class 'not possible' unless
    OmemoManager.serverSupportsOmemo(conOne, domain), i.e. the domain's disco#info lists
    http://jabber.org/protocol/pubsub."""
    one = clients.add(server.online("sintjet1"))
    if not supports(one, server.domain, NS_PUBSUB):
        # As for test_sint_omemo.py: PEP is advertised on the account (XEP-0163).
        pytest.skip("Smack marks this 'not possible': Server does not support OMEMO (PubSub): the domain's disco#info "
                    f"does not list {NS_PUBSUB} (PEP is advertised on the account's bare JID, XEP-0163)")
    pytest.skip("the rest (OMEMO sessions, JET envelope, Jingle file transfer) is client-side; its server steps are "
                "test_sint_omemo.py and the Jingle transport tests below")


# --------------------------------------------------------------------------- XEP-0261 IBB

def test_jingle_ibb(server, clients):
    """JingleTransportIntegrationTest.JingleIBBTest (XEP-0261 Jingle IBB, XEP-0047 §2 'Creating a
    Bytestream', §3 'Sending Data'): the receiver's JingleIBBTransport listens for an IBB open
    from its session peer (the sender's full JID) with the transport's sid; the sender's
    InBandBytestreamManager.establishSession opens it (block-size 4096, stanza='iq') and writes
    16000 random bytes as <data/> IQs (each waiting for its result); the receiver reads them
    all (assertArrayEquals)."""
    sender = clients.add(server.online("sintjibb1"))
    receiver = clients.add(server.online("sintjibb2"))
    sid = rnd(10)  # JingleIBBTransport: StringUtils.randomString(10)
    block = 4096   # JingleIBBTransport.DEFAULT_BLOCK_SIZE
    data = os.urandom(16000)
    iid = new_id("ibb-open")
    sender.send_raw(f"<iq type='set' id='{iid}' to='{receiver.jid}'><open xmlns='{NS_IBB}' block-size='{block}' "
                    f"sid='{sid}' stanza='iq'/></iq>")
    req = arrives(sender, receiver, iid, "the IBB open at the receiver")
    opened = req.find(q(NS_IBB, "open"))
    # the listener accepts only the open from session.getPeer() with the stream id
    assert req.get("from") == sender.jid and opened is not None and opened.get("sid") == sid, tostring(req)
    receiver.send_raw(f"<iq type='result' id='{iid}' to='{req.get('from')}'/>")
    r = sender.recv(is_iq(iid), 5, what="the answer to the IBB open")
    assert r.get("type") == "result", tostring(r)
    recv = b""
    for seq, start in enumerate(range(0, len(data), block)):
        iid = new_id(f"ibb-{seq}-")
        sender.send_raw(f"<iq type='set' id='{iid}' to='{receiver.jid}'><data xmlns='{NS_IBB}' seq='{seq}' "
                        f"sid='{sid}'>{base64.b64encode(data[start:start + block]).decode()}</data></iq>")
        req = arrives(sender, receiver, iid, f"IBB data {seq} at the receiver")
        d = req.find(q(NS_IBB, "data"))
        assert req.get("from") == sender.jid and d is not None and d.get("sid") == sid \
            and int(d.get("seq")) == seq, tostring(req)
        recv += base64.b64decode(d.text or "")
        receiver.send_raw(f"<iq type='result' id='{iid}' to='{req.get('from')}'/>")
        r = sender.recv(is_iq(iid), 5, what=f"the answer to IBB data {seq}")
        assert r.get("type") == "result", tostring(r)  # IQIBBOutputStream: nextResultOrThrow
    assert recv == data


# --------------------------------------------------------------------------- XEP-0260 S5B

class SmackSocks5Proxy:
    """Smack's local Socks5Proxy (a singleton of the JVM, so conOne and conTwo share it): accepts
    SOCKS5 connections (no authentication, CONNECT to a domain-name address) whose digest was
    added as a transfer, and keeps each connected socket by its digest."""

    def __init__(self):
        self.srv = socket.socket()
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(8)
        self.srv.settimeout(0.2)
        self.port = self.srv.getsockname()[1]
        self.allowed = set()
        self.sockets = {}
        self.cv = threading.Condition()
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def add_transfer(self, digest):
        self.allowed.add(digest)

    def _run(self):
        while self.running:
            try:
                conn, _ = self.srv.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                conn.settimeout(10)
                ver, n = recv_exact(conn, 2)
                methods = recv_exact(conn, n)
                if ver != 5 or 0 not in methods:
                    conn.close()
                    continue
                conn.sendall(b"\x05\x00")
                head = recv_exact(conn, 5)
                addr = recv_exact(conn, head[4] + 2)
                digest = addr[:-2].decode()
                if head[:4] != b"\x05\x01\x00\x03" or digest not in self.allowed:
                    conn.sendall(b"\x05\x05" + head[2:] + addr)
                    conn.close()
                    continue
                conn.sendall(b"\x05\x00" + head[2:] + addr)
                with self.cv:
                    self.sockets[digest] = conn
                    self.cv.notify_all()
            except (OSError, ConnectionError, ValueError):
                conn.close()

    def get_socket(self, digest, timeout=10):
        with self.cv:
            self.cv.wait_for(lambda: digest in self.sockets, timeout)
            return self.sockets.get(digest)

    def close(self):
        self.running = False
        self.srv.close()
        for s in self.sockets.values():
            s.close()


def socks5_connect(host, port, digest, timeout=10):
    """Smack's Socks5Client: SOCKS5 CONNECT to the SHA-1 digest as a domain name."""
    s = socket.create_connection((host, port), timeout=timeout)
    s.sendall(b"\x05\x01\x00")
    assert recv_exact(s, 2) == b"\x05\x00"
    addr = digest.encode()
    s.sendall(b"\x05\x01\x00\x03" + bytes([len(addr)]) + addr + b"\x00\x00")
    resp = recv_exact(s, 5 + len(addr) + 2)
    assert resp[1] == 0 and resp[5:5 + len(addr)] == addr, resp
    return s


def server_stream_hosts(c, domain):
    """Socks5BytestreamManager.determineProxies (disco#items of the domain, disco#info of each
    item for a proxy/bytestreams identity) and JingleS5BTransportManager.determineStreamHostInfo
    (a bytestreams query to each proxy); failures only drop the proxy."""
    hosts = []
    try:
        items = c.iq("get", f"<query xmlns='{NS_ITEMS}'/>", to=domain)
    except XMPPTimeout:
        return hosts
    for item in items.iter(q(NS_ITEMS, "item")):
        try:
            info = c.iq("get", f"<query xmlns='{NS_INFO}'/>", to=item.get("jid"))
        except XMPPTimeout:
            continue
        ids = {(i.get("category"), i.get("type")) for i in info.iter(q(NS_INFO, "identity"))}
        if info.get("type") != "result" or ("proxy", "bytestreams") not in ids:
            continue
        try:
            r = c.iq("get", f"<query xmlns='{NS_BS}'/>", to=item.get("jid"))
        except XMPPTimeout:
            continue
        if r.get("type") == "result":
            hosts += [(h.get("jid"), h.get("host"), int(h.get("port"))) for h in r.iter(q(NS_BS, "streamhost"))]
    return hosts


def collect_candidates(c, domain, proxy):
    """JingleS5BTransportManager.collectCandidates: the local proxy's stream host (jid = the
    connection's own, priority 100, type 'proxy'), then the server's proxies (priority 0)."""
    cands = [{"cid": rnd(16), "jid": c.jid, "host": "127.0.0.1", "port": proxy.port, "priority": 100}]
    for jid, host, port in server_stream_hosts(c, domain):
        cands.append({"cid": rnd(16), "jid": jid, "host": host, "port": port, "priority": 0})
    return cands


def digest(sid, a, b):
    return hashlib.sha1(f"{sid}{a}{b}".encode()).hexdigest()  # Socks5Utils.createDigest


def connect_to_candidates(cands, dst):
    """JingleS5BTransport.connectToCandidates: the first of the peer's candidates that connects
    (a peer's proposal: a plain Socks5Client with the peer's dstaddr)."""
    for cand in cands:
        try:
            return cand, socks5_connect(cand["host"], cand["port"], dst, timeout=5)
        except (OSError, AssertionError, ConnectionError):
            continue
    raise AssertionError("could not connect to any candidate (Smack sends candidate-error)")


def transport_info(frm, to, role, session_jid, transport_sid, info):
    """JingleS5BTransportManager.createTransportInfo: a transport-info for content 'content'
    (creator and senders 'initiator') of session 'session', from our full JID to the peer."""
    iid = new_id("jingle")
    frm.send_raw(f"<iq type='set' id='{iid}' to='{to.jid}' from='{frm.jid}'><jingle xmlns='{NS_JINGLE}' "
                 f"{role}='{session_jid}' action='transport-info' sid='session'><content creator='initiator' "
                 f"name='content' senders='initiator'><transport xmlns='{NS_S5B}' sid='{transport_sid}'>{info}"
                 "</transport></content></jingle></iq>")
    return iid


def jingle_arrives(src, dst, iid, element, what):
    """The peer's JingleManager finds the session by (from, sid): the transport-info must come
    from the session's peer full JID (else Smack answers with an unknown-session error)."""
    req = arrives(src, dst, iid, what)
    j = req.find(q(NS_JINGLE, "jingle"))
    assert req.get("from") == src.jid and j is not None and j.get("sid") == "session" \
        and j.get("action") == "transport-info", tostring(req)
    info = j.find(q(NS_JINGLE, "content")).find(q(NS_S5B, "transport")).find(q(NS_S5B, element))
    assert info is not None, tostring(req)
    return req, info


def test_jingle_s5b(server, clients):
    """JingleTransportIntegrationTest.JingleS5BTest (XEP-0260 §2.3-2.4: each party connects to
    one of the other's candidates and says so in a transport-info <candidate-used/>; the
    nominated candidate, a proxy one, is activated with <activated/>): both sides gather
    candidates (the local Socks5Proxy, the server's proxies), each connects to the other's and
    sends candidate-used to the other's full JID; with equal priorities the responder takes
    the initiator's choice (its own candidate), takes the socket from the local proxy and sends
    'activated' (waiting for the result); the initiator then writes 16000 random bytes, which
    the responder reads (assertArrayEquals)."""
    sender = clients.add(server.online("sintjs5b1"))    # conOne, the initiator
    receiver = clients.add(server.online("sintjs5b2"))  # conTwo, the responder
    proxy = SmackSocks5Proxy()
    sockets = []
    try:
        # createTransportForInitiator / createTransportForResponder (the session-accept of each
        # side's transport is handled locally in the Java test: nothing on the wire)
        s_cands = collect_candidates(sender, server.domain, proxy)
        sid = rnd(24)
        s_dst = digest(sid, sender.jid, receiver.jid)
        proxy.add_transfer(s_dst)
        r_cands = collect_candidates(receiver, server.domain, proxy)
        r_dst = digest(sid, receiver.jid, sender.jid)
        proxy.add_transfer(r_dst)

        # basicTransportTest: rTransport.establishIncomingBytestreamSession
        r_choice, r_sock = connect_to_candidates(s_cands, s_dst)
        sockets.append(r_sock)
        r_used = transport_info(receiver, sender, "responder", receiver.jid, sid,
                                f"<candidate-used cid='{r_choice['cid']}'/>")
        # sTransport.establishOutgoingBytestreamSession
        s_choice, s_sock = connect_to_candidates(r_cands, r_dst)
        sockets.append(s_sock)
        s_used = transport_info(sender, receiver, "initiator", sender.jid, sid,
                                f"<candidate-used cid='{s_choice['cid']}'/>")

        # the initiator's JingleManager: the responder's candidate-used names one of its candidates
        req, info = jingle_arrives(receiver, sender, r_used, "candidate-used", "the responder's candidate-used")
        assert info.get("cid") in [c["cid"] for c in s_cands], tostring(req)
        sender.send_raw(f"<iq type='result' id='{r_used}' to='{req.get('from')}'/>")
        # initiator's connectIfReady: its own choice (a 'proxy' candidate): wait for candidate-activate

        # the responder's JingleManager: the initiator's candidate-used; connectIfReady nominates it
        # (equal priorities, responder), Socks5ClientForInitiator takes the socket from the local proxy,
        # and candidate-activated goes to the initiator (nextResultOrThrow) before the result
        req2, info = jingle_arrives(sender, receiver, s_used, "candidate-used", "the initiator's candidate-used")
        assert info.get("cid") in [c["cid"] for c in r_cands], tostring(req2)
        nominated = proxy.get_socket(r_dst)
        assert nominated is not None, "target is not connected to SOCKS5 proxy"
        activated = transport_info(receiver, sender, "responder", receiver.jid, sid,
                                   f"<activated cid='{info.get('cid')}'/>")
        # the initiator: handleCandidateActivate -> onTransportReady -> writes the data
        req3, _ = jingle_arrives(receiver, sender, activated, "activated", "the responder's candidate activated")
        sender.send_raw(f"<iq type='result' id='{activated}' to='{req3.get('from')}'/>")
        data = os.urandom(16000)
        s_sock.sendall(data)
        r = receiver.recv(is_iq(activated), 5, what="the answer to candidate activated")
        assert r.get("type") == "result", "Could not send candidate-activated: " + tostring(r)
        receiver.send_raw(f"<iq type='result' id='{s_used}' to='{req2.get('from')}'/>")
        nominated.settimeout(10)
        recv = b""
        while len(recv) < len(data):
            chunk = nominated.recv(512)
            if not chunk:
                break
            recv += chunk
        assert recv == data
    finally:
        for s in sockets:
            s.close()
        proxy.close()
