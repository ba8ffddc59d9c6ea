"""Port of Smack's FormTest (XEP-0004 data forms carried in messages):
testFilloutForm. conOne sends a form (hidden, fixed, text-single, text-multi, boolean
fields, title and instructions) in a chat message with a thread; conTwo's copy carries it;
conTwo answers to conOne's bare JID with a submitted form in the same thread; conOne's copy
carries the answers. What the server does is route both and leave the forms untouched
(RFC 6120 8.4)."""

from rawxmpp import C, q, tostring
from test_sint_helpers import rnd

NS_DATA = "jabber:x:data"


def fields(m):
    x = m.find(q(NS_DATA, "x"))
    assert x is not None, tostring(m)
    return x, {f.get("var"): f for f in x.findall(q(NS_DATA, "field"))}


def test_fillout_form(server, clients):
    one = clients.add(server.online("sintform1"))
    two = clients.add(server.online("sintform2"))
    thread = f"form-{rnd()}"
    form = (f"<x xmlns='{NS_DATA}' type='form'><title>Case configurations</title>"
            "<instructions>Fill out this form to report your case.\nThe case will be created automatically."
            "</instructions>"
            "<field var='hidden_var' type='hidden'><value>Some value for the hidden variable</value></field>"
            "<field type='fixed'><value>Section 1: Case description</value></field>"
            "<field var='name' type='text-single' label='Enter a name for the case'/>"
            "<field var='description' type='text-multi' label='Enter a description'/>"
            "<field var='time' type='boolean' label='Is this your first case?'/>"
            "<field var='age' type='text-single' label='How old are you?'/></x>")
    one.send_raw(f"<message to='{two.jid}' type='chat'><body>To enter a case please fill out this form and send it "
                 f"back to me</body><thread>{thread}</thread>{form}</message>")
    m = two.recv(lambda e: e.tag == C("message") and e.findtext(C("thread")) == thread, 5, what="the form")
    x, f = fields(m)
    assert x.get("type") == "form" and x.findtext(q(NS_DATA, "title")) == "Case configurations", tostring(m)
    assert "name" in f and "description" in f and "hidden_var" in f, tostring(m)
    assert f["hidden_var"].findtext(q(NS_DATA, "value")) == "Some value for the hidden variable"
    assert x.findtext(q(NS_DATA, "instructions")).count("\n") == 1, tostring(m)
    answer = (f"<x xmlns='{NS_DATA}' type='submit'>"
              "<field var='hidden_var'><value>Some value for the hidden variable</value></field>"
              "<field var='name'><value>Credit card number invalid</value></field>"
              "<field var='description'><value>The ATM says that my credit card number is invalid.</value>"
              "<value>What's going on?</value></field>"
              "<field var='time'><value>1</value></field><field var='age'><value>20</value></field></x>")
    two.send_raw(f"<message to='{one.bare}' type='chat'><body>To enter a case please fill out this form and send it "
                 f"back to me</body><thread>{thread}</thread>{answer}</message>")
    m = one.recv(lambda e: e.tag == C("message") and e.findtext(C("thread")) == thread, 5, what="the answers")
    x, f = fields(m)
    assert x.get("type") == "submit", tostring(m)
    assert f["name"].findtext(q(NS_DATA, "value")) == "Credit card number invalid"
    assert [v.text for v in f["description"].findall(q(NS_DATA, "value"))] == [
        "The ATM says that my credit card number is invalid.", "What's going on?"]
    assert f["time"].findtext(q(NS_DATA, "value")) == "1"
    assert f["age"].findtext(q(NS_DATA, "value")) == "20", "The age is bad"
