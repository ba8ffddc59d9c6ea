"""A minimal authoritative DNS responder for federation tests (UDP and TCP, one zone).

    python3 fakedns.py ADDR PORT ZONEFILE

ZONEFILE holds JSON: {"a": {"name": "ip"}, "srv": {"_xmpp-server._tcp.name": [[prio, weight,
port, "target"], ...]}}. Names are matched case-insensitively without the final dot. Other
questions get an empty NOERROR answer (NXDOMAIN for names it knows nothing of). Run inside a
network namespace the test created, on 127.0.0.1:53, with the namespace's resolv.conf
(/etc/netns/NAME/resolv.conf, bind-mounted by `ip netns exec`) naming it: then both Starling
(hickory) and Prosody (net.dns) resolve the test's domains through it, SRV records included.
It stops by itself after --max-secs (default 600).
"""
import json
import socket
import struct
import sys
import threading
import time

QTYPE_A, QTYPE_SRV = 1, 33


def read_name(msg: bytes, off: int):
    labels = []
    while True:
        n = msg[off]
        if n == 0:
            return ".".join(labels), off + 1
        if n & 0xC0 == 0xC0:  # compression pointer (not in questions we get, but be safe)
            ptr = struct.unpack("!H", msg[off:off + 2])[0] & 0x3FFF
            name, _ = read_name(msg, ptr)
            labels.append(name)
            return ".".join(labels), off + 2
        labels.append(msg[off + 1:off + 1 + n].decode("ascii", "replace"))
        off += 1 + n


def encode_name(name: str) -> bytes:
    out = b""
    for label in name.strip(".").split("."):
        if label:
            out += bytes([len(label)]) + label.encode("ascii")
    return out + b"\x00"


def answer(query: bytes, zone: dict) -> bytes:
    qid, flags, qd = struct.unpack("!HHH", query[:6])
    name, off = read_name(query, 12)
    qtype, qclass = struct.unpack("!HH", query[off:off + 4])
    question = query[12:off + 4]
    key = name.lower().rstrip(".")
    records = []
    if qtype == QTYPE_A and key in zone["a"]:
        records.append((QTYPE_A, socket.inet_aton(zone["a"][key])))
    if qtype == QTYPE_SRV and key in zone["srv"]:
        for prio, weight, port, target in zone["srv"][key]:
            records.append((QTYPE_SRV, struct.pack("!HHH", prio, weight, port) + encode_name(target)))
    known = key in zone["a"] or key in zone["srv"]
    rcode = 0 if (records or known) else 3
    rflags = 0x8000 | 0x0400 | (flags & 0x0100) | 0x0080 | rcode  # QR, AA, RD copied, RA
    out = struct.pack("!HHHHHH", qid, rflags, 1, len(records), 0, 0) + question
    for rtype, rdata in records:
        out += b"\xc0\x0c" + struct.pack("!HHIH", rtype, 1, 60, len(rdata)) + rdata
    return out


def serve_udp(sock, zone):
    while True:
        data, peer = sock.recvfrom(4096)
        try:
            sock.sendto(answer(data, zone), peer)
        except (IndexError, struct.error):
            pass


def serve_tcp(sock, zone):
    while True:
        conn, _ = sock.accept()
        with conn:
            try:
                n = struct.unpack("!H", conn.recv(2))[0]
                data = b""
                while len(data) < n:
                    chunk = conn.recv(n - len(data))
                    if not chunk:
                        break
                    data += chunk
                reply = answer(data, zone)
                conn.sendall(struct.pack("!H", len(reply)) + reply)
            except (OSError, IndexError, struct.error):
                pass


def main():
    addr, port, zonefile = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    max_secs = 600
    if "--max-secs" in sys.argv:
        max_secs = int(sys.argv[sys.argv.index("--max-secs") + 1])
    with open(zonefile) as f:
        zone = json.load(f)
    zone["a"] = {k.lower(): v for k, v in zone.get("a", {}).items()}
    zone["srv"] = {k.lower(): v for k, v in zone.get("srv", {}).items()}
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind((addr, port))
    t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    t.bind((addr, port))
    t.listen(16)
    for target, s in ((serve_udp, u), (serve_tcp, t)):
        threading.Thread(target=target, args=(s, zone), daemon=True).start()
    print("ready", flush=True)
    time.sleep(max_secs)


if __name__ == "__main__":
    main()
