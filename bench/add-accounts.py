#!/usr/bin/env python3
"""Add accounts user<i>@DOMAIN / perfpass<i> (i = FIRST..LAST) through a running Starling node's
admin socket (DATA_DIR/admin.sock), over 4 connections at once: seconds per thousand accounts,
where one `starling user add` process per account takes minutes for 15,000. An account that
already exists is left as it is.

usage: add-accounts.py ADMIN_SOCKET FIRST LAST [DOMAIN (perf.test)]
"""
import json, socket, sys, threading, time

sock, first, last = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
domain = sys.argv[4] if len(sys.argv) > 4 else "perf.test"
CONNECTIONS = 4
failed = []


def connect():
    for _ in range(100):  # the node opens its admin socket shortly after its ports: up to 10 s
        try:
            s = socket.socket(socket.AF_UNIX)
            s.connect(sock)
            return s
        except OSError:
            time.sleep(0.1)
    sys.exit(f"no admin socket at {sock}")


def worker(k):
    f = connect().makefile("rw")
    for i in range(first + k, last + 1, CONNECTIONS):
        f.write(json.dumps({"cmd": "user_add", "jid": f"user{i}@{domain}", "password": f"perfpass{i}"}) + "\n")
        f.flush()
        line = f.readline()
        if not line:
            failed.append((i, "the node closed the admin connection"))
            return
        r = json.loads(line)
        if not r["ok"] and "exist" not in (r.get("error") or ""):
            failed.append((i, r.get("error")))


ts = [threading.Thread(target=worker, args=(k,)) for k in range(CONNECTIONS)]
for t in ts:
    t.start()
for t in ts:
    t.join()
if failed:
    sys.exit(f"{len(failed)} accounts not added; first: {failed[0]}")
print(f"accounts user{first}..user{last}@{domain} present")
