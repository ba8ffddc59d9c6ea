"""XEP-0363 in a 3-node cluster: a slot got through one node is uploaded through another
(the token key is shared through the replicated store), and every node serves the file
(the others fetch it from the node that holds it, pinning its certificate), also after
the owner restarts; a second PUT of the slot through a third node is refused (409); the
quota counts the user's files cluster-wide. Right after a PUT one other node fetches a
copy: with the owner down (stopped, or killed before anyone asked for the file) the
others serve the file from that copy; with no copy reachable either, another node
answers 502 at once instead of hanging, and serves the file again once the owner is
back. With [upload] shared_path every node reads the one directory.
"""

import os
import time

import pytest

from cluster import Cluster, online_on, relogin, pick_port
from test_upload import MAX_FILE, https, parse_slot, path_of, put, slot

pytestmark = [pytest.mark.starling_only, pytest.mark.cluster]


def upload_lines(node):
    if not hasattr(node, "upload_port"):
        node.upload_port = pick_port()
    return ["[upload]", "enabled = true", 'bind = "127.0.0.1"', f"port = {node.upload_port}",
            f'public_url = "https://127.0.0.1:{node.upload_port}"', f"max_file_size = {MAX_FILE}",
            f"quota_bytes = {3 * MAX_FILE}"]


@pytest.fixture
def ucluster(tmp_path_factory):
    c = Cluster(str(tmp_path_factory.mktemp("ucluster")), 3, extra_config=upload_lines)
    yield c
    c.stop()


def copy_path(node, slot_id):
    return os.path.join(node.data_dir, "upload", ".cache", slot_id)


def wait_copy(cl, slot_id, owner, timeout=15):
    """The id of the node (not ``owner``) that took a copy of the file after its PUT."""
    deadline = time.monotonic() + timeout
    while True:
        held = [i for i in sorted(cl.nodes) if i != owner and os.path.exists(copy_path(cl[i], slot_id))]
        if held:
            return held[0]
        assert time.monotonic() < deadline, "no node took a copy of the upload"
        time.sleep(0.2)


def get_on(node, url, timeout=20):
    """GET through ``node``'s listener (retried while it (re)opens)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return https(node, "GET", path_of(url), port=node.upload_port)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.mark.timeout(150)
def test_upload_through_one_node_served_by_all(ucluster):
    cl = ucluster
    a = online_on(cl[1], "cu", presence=False)
    try:
        data = bytes(range(256)) * 8
        put_url, headers, get_url = parse_slot(slot(a, "shared.bin", len(data), "application/octet-stream"))
        assert f":{cl[1].upload_port}/" in put_url
        # The PUT goes to node 2 (same path): the token is good there too.
        st, _, body = https(cl[2], "PUT", path_of(put_url), body=data,
                            headers={**headers, "Content-Type": "application/octet-stream"},
                            port=cl[2].upload_port)
        assert st == 201, body
        for i in (1, 2, 3):
            st, h, body = get_on(cl[i], get_url)
            assert st == 200 and body == data, (i, st, h)
            assert h["content-type"] == "application/octet-stream" and h["x-content-type-options"] == "nosniff"
        # Nodes 1 and 3 fetched it from node 2 into their caches; node 2 serves its own copy.
        slot_id = path_of(get_url).split("/")[-2]
        for i, cached in ((1, True), (2, False), (3, True)):
            assert os.path.exists(os.path.join(cl[i].data_dir, "upload", ".cache", slot_id)) == cached, i
        assert os.path.exists(os.path.join(cl[2].data_dir, "upload", slot_id))
        # Range on a node that fetched it.
        st, _, body = https(cl[3], "GET", path_of(get_url), headers={"Range": "bytes=10-19"},
                            port=cl[3].upload_port)
        assert st == 206 and body == data[10:20]
        # The same slot again through node 3: 409.
        st, _, _ = https(cl[3], "PUT", path_of(put_url), body=data,
                         headers={**headers, "Content-Type": "application/octet-stream"}, port=cl[3].upload_port)
        assert st == 409

        # Quota is cluster-wide: two more files through node 3 fill it, a slot from node 1 is refused.
        a3 = relogin(cl[3], a, presence=False)
        for n in range(2):
            pu, hd, _ = parse_slot(slot(a3, f"f{n}.bin", MAX_FILE, "application/octet-stream"))
            assert put(cl[3], pu, b"z" * MAX_FILE, hd, "application/octet-stream")[0] == 201
        deadline = time.monotonic() + 10
        while True:
            r = slot(a, "over.bin", MAX_FILE)
            if r.get("type") == "error":
                break
            assert time.monotonic() < deadline, "quota not seen on node 1"
            time.sleep(0.3)
        assert r.find("{jabber:client}error/{urn:ietf:params:xml:ns:xmpp-stanzas}resource-constraint") is not None
        a3.close()

        # A file held by node 2, not yet fetched by anyone: node 2 restarts, then node 3
        # fetches it from the restarted node.
        b = online_on(cl[2], "cv", presence=False)
        data2 = b"second file, held by node 2\n" * 30
        pu, hd, gu2 = parse_slot(slot(b, "second.txt", len(data2), "text/plain"))
        assert put(cl[2], pu, data2, hd, "text/plain")[0] == 201
        b.close()
        cl.restart(2)
        cl.wait_members([1, 2, 3], timeout=30)
        st, h, body = get_on(cl[3], gu2)
        assert st == 200 and body == data2 and h["content-type"].startswith("text/plain")
        st, _, body = get_on(cl[2], gu2)
        assert st == 200 and body == data2

        # A third file held by node 2, copied right after its PUT to one other node.
        b = online_on(cl[2], "cw", presence=False)
        data3 = b"third" * 100
        pu, hd, gu3 = parse_slot(slot(b, "third.txt", len(data3), "text/plain"))
        assert put(cl[2], pu, data3, hd, "text/plain")[0] == 201
        b.close()
        slot3 = path_of(gu3).split("/")[-2]
        wait_copy(cl, slot3, owner=2)
        b_port = cl[2].upload_port
        cl[2].stop()
        # Node 2 down: the others serve it (the copy, or fetched from the node with it).
        for i in (1, 3):
            st, _, body = get_on(cl[i], gu3)
            assert st == 200 and body == data3, (i, st)
        # No copy left on a reachable node: 502 at once, not a hang.
        for i in (1, 3):
            os.remove(copy_path(cl[i], slot3))
        t0 = time.monotonic()
        st, _, _ = get_on(cl[3], gu3)
        assert st == 502 and time.monotonic() - t0 < 10, st
        cl[2].start()
        assert cl[2].upload_port == b_port
        deadline = time.monotonic() + 30
        while True:
            st, _, body = get_on(cl[3], gu3)
            if st == 200:
                break
            assert time.monotonic() < deadline, ("owner back, still", st)
            time.sleep(0.5)
        assert body == data3
        for i in (1, 2, 3):
            cl[i].assert_healthy()
    finally:
        a.close()


@pytest.mark.timeout(120)
def test_a_file_outlives_its_owner_killed(ucluster):
    """Uploaded through node 1 and fetched by nobody; node 1 killed (-9): both survivors
    serve it, the one with the copy made after the PUT and the other through it."""
    cl = ucluster
    a = online_on(cl[1], "ck", presence=False)
    try:
        data = os.urandom(3000)
        put_url, headers, get_url = parse_slot(slot(a, "keep.bin", len(data), "application/octet-stream"))
        assert put(cl[1], put_url, data, headers, "application/octet-stream")[0] == 201
    finally:
        a.close()
    slot_id = path_of(get_url).split("/")[-2]
    holder = wait_copy(cl, slot_id, owner=1)
    other = next(i for i in (2, 3) if i != holder)
    assert not os.path.exists(copy_path(cl[other], slot_id))
    cl.kill9(1)
    for i in (other, holder):
        st, h, body = get_on(cl[i], get_url)
        assert st == 200 and body == data, (i, st)
        assert h["content-type"] == "application/octet-stream"
    assert os.path.exists(copy_path(cl[other], slot_id))


@pytest.mark.timeout(120)
def test_shared_path_is_read_by_every_node(tmp_path_factory):
    """With [upload] shared_path, every node reads the one directory: no fetching."""
    shared = str(tmp_path_factory.mktemp("shared-uploads"))

    def lines(node):
        return upload_lines(node) + [f'shared_path = "{shared}"']

    cl = Cluster(str(tmp_path_factory.mktemp("ushared")), 3, extra_config=lines)
    try:
        a = online_on(cl[1], "cs", presence=False)
        data = b"on the shared volume\n" * 20
        pu, hd, gu = parse_slot(slot(a, "shared.txt", len(data), "text/plain"))
        assert put(cl[1], pu, data, hd, "text/plain")[0] == 201
        slot_id = path_of(gu).split("/")[-2]
        assert os.path.exists(os.path.join(shared, slot_id))
        for i in (1, 2, 3):
            st, _, body = get_on(cl[i], gu)
            assert st == 200 and body == data, i
            assert not os.path.exists(os.path.join(shared, ".cache", slot_id))
        a.close()
    finally:
        cl.stop()
