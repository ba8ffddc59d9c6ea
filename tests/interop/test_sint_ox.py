"""The server side of Smack's OpenPGP for XMPP integration tests (XEP-0373 / XEP-0374:
AbstractOpenPgpIntegrationTest, OXSecretKeyBackupIntegrationTest, the PEP steps of
OXInstantMessagingIntegrationTest), done the way Smack's OpenPgpPubSubUtil does them through
PubSubManager at the account's own bare JID:

- the classes are 'not possible' unless PEP is supported (pubsub/pep identity of the bare
  JID) and, for the backup, the account advertises pubsub#access-whitelist;
- getOrCreateLeafNode: disco#info of the node (pubsub/leaf identity) or, on
  <item-not-found/>, <create/>; changeAccessModelIfNecessary: read the node configuration
  and submit a new access_model when it differs; then publish;
- public keys (XEP-0373 4): node urn:xmpp:openpgp:0:public-keys:<FINGERPRINT> and the
  metadata list node urn:xmpp:openpgp:0:public-keys, both 'open': another user without any
  subscription reads them;
- the secret key backup (5): node urn:xmpp:openpgp:0:secret-key, 'whitelist': the owner reads
  it back, another user gets <not-allowed/> with <closed-node/>;
- clean-up: the nodes are deleted (a missing one is <item-not-found/>, which Smack ignores).
The OpenPGP crypto itself happens in the clients and is not ported.
"""

import base64
import os

from rawxmpp import C, q, stanza_error, tostring
from test_pep import DISCO_INFO, NS_DATA, NS_ERRORS, NS_OWNER, NS_PUBSUB, ok

NS_OX = "urn:xmpp:openpgp:0"
PUBKEYS = NS_OX + ":public-keys"
SECRET = NS_OX + ":secret-key"


def features_and_identities(c, jid):
    r = ok(c.iq("get", f"<query xmlns='{DISCO_INFO}'/>", to=jid))
    return ({f.get("var") for f in r.iter(q(DISCO_INFO, "feature"))},
            {(i.get("category"), i.get("type")) for i in r.iter(q(DISCO_INFO, "identity"))})


def get_or_create_leaf(c, node):
    """PubSubManager.getOrCreateLeafNode at the own bare JID."""
    r = c.iq("get", f"<query xmlns='{DISCO_INFO}' node='{node}'/>", to=c.bare)
    if r.get("type") == "result":
        ids = {(i.get("category"), i.get("type")) for i in r.iter(q(DISCO_INFO, "identity"))}
        assert ("pubsub", "leaf") in ids, tostring(r)
        return False
    assert stanza_error(r)[1] == "item-not-found", tostring(r)
    ok(c.iq("set", f"<pubsub xmlns='{NS_PUBSUB}'><create node='{node}'/></pubsub>", to=c.bare))
    return True


def access_model(c, node):
    r = ok(c.iq("get", f"<pubsub xmlns='{NS_OWNER}'><configure node='{node}'/></pubsub>", to=c.bare))
    for f in r.iter(q(NS_DATA, "field")):
        if f.get("var") == "pubsub#access_model":
            return f.findtext(q(NS_DATA, "value"))
    raise AssertionError("no pubsub#access_model in the node configuration: " + tostring(r))


def change_access_model_if_necessary(c, node, model):
    if access_model(c, node) != model:
        ok(c.iq("set", f"<pubsub xmlns='{NS_OWNER}'><configure node='{node}'><x xmlns='{NS_DATA}' type='submit'>"
                       f"<field var='FORM_TYPE' type='hidden'><value>{NS_PUBSUB}#node_config</value></field>"
                       f"<field var='pubsub#access_model'><value>{model}</value></field></x></configure></pubsub>",
                to=c.bare))
    assert access_model(c, node) == model


def publish(c, node, payload):
    return ok(c.iq("set", f"<pubsub xmlns='{NS_PUBSUB}'><publish node='{node}'><item>{payload}</item></publish>"
                          "</pubsub>", to=c.bare))


def items(c, owner, node):
    return c.iq("get", f"<pubsub xmlns='{NS_PUBSUB}'><items node='{node}'/></pubsub>", to=owner)


def item_payloads(r):
    ok(r)
    its = r.find(q(NS_PUBSUB, "pubsub")).find(q(NS_PUBSUB, "items")).findall(q(NS_PUBSUB, "item"))
    return [list(i)[0] for i in its if len(i)]


def delete_node(c, node):
    r = c.iq("set", f"<pubsub xmlns='{NS_OWNER}'><delete node='{node}'/></pubsub>", to=c.bare)
    assert r.get("type") == "result" or stanza_error(r)[1] == "item-not-found", tostring(r)


def login(server, clients, prefix):
    c = clients.add(server.online(prefix))
    _, ids = features_and_identities(c, c.bare)
    assert ("pubsub", "pep") in ids, "no PEP (Smack: 'not possible')"
    return c


def test_public_key_publication_read_by_anyone(server, clients):
    """XEP-0373 4.1 / 4.3 as OpenPgpPubSubUtil.publishPublicKey does it: the key node and the
    metadata node made 'open', published; a user with no subscription reads both (4.3: a
    contact fetches the public key)."""
    alice = login(server, clients, "sintoxa")
    bob = login(server, clients, "sintoxb")
    fpr = os.urandom(20).hex().upper()
    key_node = f"{PUBKEYS}:{fpr}"
    date = "2018-03-01T15:26:12Z"
    for node in (key_node, PUBKEYS):
        get_or_create_leaf(alice, node)
        change_access_model_if_necessary(alice, node, "open")
    key = base64.b64encode(os.urandom(64)).decode()
    publish(alice, key_node, f"<pubkey xmlns='{NS_OX}' date='{date}'><data>{key}</data></pubkey>")
    publish(alice, PUBKEYS, f"<public-keys-list xmlns='{NS_OX}'><pubkey-metadata v4-fingerprint='{fpr}' "
                            f"date='{date}'/></public-keys-list>")
    # bob's fetchPubkeysList / fetchPubkey: getLeafNode at alice's bare JID, then the items
    for node in (PUBKEYS, key_node):
        info = ok(bob.iq("get", f"<query xmlns='{DISCO_INFO}' node='{node}'/>", to=alice.bare))
        assert ("pubsub", "leaf") in {(i.get("category"), i.get("type")) for i in info.iter(q(DISCO_INFO, "identity"))}
    meta = item_payloads(items(bob, alice.bare, PUBKEYS))
    assert meta and meta[-1].find(q(NS_OX, "pubkey-metadata")).get("v4-fingerprint") == fpr, [tostring(m) for m in meta]
    keys = item_payloads(items(bob, alice.bare, key_node))
    assert keys and keys[-1].findtext(q(NS_OX, "data")) == key
    # clean-up
    delete_node(alice, key_node)
    delete_node(alice, PUBKEYS)
    assert stanza_error(items(bob, alice.bare, key_node))[1] == "item-not-found"
    delete_node(alice, PUBKEYS)  # already gone: ignored as Smack does


def test_secret_key_backup(server, clients):
    """OXSecretKeyBackupIntegrationTest (XEP-0373 5): the account advertises the whitelist
    access model; the backup node is made 'whitelist' and published; the owner restores it
    (reads it back) and another user is refused (<not-allowed/> + <closed-node/>, XEP-0060
    6.5.9.3)."""
    alice = login(server, clients, "sintoxa")
    bob = login(server, clients, "sintoxb")
    feats, _ = features_and_identities(alice, alice.bare)
    assert f"{NS_PUBSUB}#access-whitelist" in feats, "no whitelist access model (Smack: 'not possible')"
    get_or_create_leaf(alice, SECRET)
    change_access_model_if_necessary(alice, SECRET, "whitelist")
    secret = base64.b64encode(os.urandom(96)).decode()
    publish(alice, SECRET, f"<secretkey xmlns='{NS_OX}'>{secret}</secretkey>")
    got = item_payloads(items(alice, alice.bare, SECRET))
    assert got and got[-1].text == secret, [tostring(g) for g in got]
    r = items(bob, alice.bare, SECRET)
    assert stanza_error(r)[1] == "not-allowed", tostring(r)
    assert r.find(C("error")).find(q(NS_ERRORS, "closed-node")) is not None, tostring(r)
    delete_node(alice, SECRET)
    assert get_or_create_leaf(alice, SECRET), "the deleted node still answered disco#info"
    delete_node(alice, SECRET)
