#!/usr/bin/env python3
"""One Tsung 1.7 chat run against a server on loopback, measured from outside the server.

usage: tsung-run.py --port P --server-pid PID [--server-pid PID2 ...] --label NAME --json OUT.json
                    [--users 1000] [--arrival-secs 10] [--messages 45] [--size 100]
                    [--domain perf.test] [--max-secs DURATION+60]
                    [--rooms 10 --rate 20 [--muc-service conference.perf.test]]

Tsung logs in USERS accounts user<i>@DOMAIN / perfpass<i> over ARRIVAL_SECS (STARTTLS, SASL PLAIN,
bind, session, roster get, initial presence: Tsung's `auth_sasl` sequence), lets each think 15 s,
then each sends MESSAGES chat messages of SIZE bytes, one a second, to a random online user
(`destination="online"`, stamped so Tsung measures delivery latency), and closes. (Tsung's
arrivals are random: the phase ends at USERS or after twice ARRIVAL_SECS.) Tsung prints its
statistics every 5 s; this script samples the server's CPU (utime+stime of SERVER_PID) twice a
second and divides the server CPU between the first and last statistics dump of the plateau of
Tsung's send rate (every user that logged in sending) by the messages Tsung sent between them. Every run stops by itself: Tsung's own
`duration` and MAX_SECS (the Tsung process is killed by PID after that).

With --rooms N (group chat, XEP-0045): the USERS users are spread evenly over N rooms
(room = Tsung user id mod N) of the MUC service --muc-service, all join (the first user of each
room creates it and accepts the default configuration, XEP-0045 10.1.2: an instant room; the others
join 2 s after logging in), wait until everybody is in, then each sends MESSAGES groupchat messages
of SIZE bytes with pauses drawn uniformly from 0.5..1.5 x USERS/RATE s (so RATE messages/s into the
rooms in total) and stays joined until every user is done. The window is from the Tsung statistics
interval where sending starts to the last one with a message sent; every message is delivered to
the USERS/N occupants of its room (the sender's own copy included), so the server CPU per delivery
is the window's CPU over messages x USERS/N (if some users could not join: over the messages of
joined users times the joined users of a room). `received_ratio` is the stamped messages Tsung saw
(at most one per received chunk, so a lower bound) over the deliveries expected.

Writes OUT.json in starling-bench's format (`figures`, `runs[0]`), so bench/compare.sh and
bench/summarize.py treat it like any other scenario.
"""
import argparse, json, os, re, shutil, signal, subprocess, sys, tempfile, threading, time

p = argparse.ArgumentParser()
p.add_argument("--port", type=int, required=True)
p.add_argument("--server-pid", type=int, action="append", required=True,
               help="the server's process; several (a cluster's nodes): their CPU is summed")
p.add_argument("--label", default="server")
p.add_argument("--json", required=True)
p.add_argument("--users", type=int, default=1000)
p.add_argument("--arrival-secs", type=int, default=10)
p.add_argument("--messages", type=int, default=45)
p.add_argument("--size", type=int, default=100)
p.add_argument("--domain", default="perf.test")
p.add_argument("--max-secs", type=int, default=0,
               help="Tsung is killed after this (default: its load's duration + 60 s, at most 900)")
p.add_argument("--rooms", type=int, default=0, help="group chat: this many rooms (0: one-to-one chat)")
p.add_argument("--rate", type=float, default=20, help="group chat: messages/s into the rooms in total")
p.add_argument("--muc-service", default=None, help="group chat: the MUC service (conference.DOMAIN)")
a = p.parse_args()
THINK = 15
MUC = a.rooms > 0
if MUC and a.users % a.rooms:
    sys.exit("--users must be a multiple of --rooms (every room gets as many occupants)")
if not MUC and a.messages < a.arrival_secs + 15:
    sys.exit("--messages must exceed --arrival-secs by 15 or more (a window where all users send)")
if not shutil.which("tsung"):
    sys.exit("tsung is not installed (Debian: apt-get install tsung)")

LOGIN = """
      <request><jabber type="connect" ack="local"/></request>
      <request><jabber type="starttls" ack="bidi_ack"/></request>
      <request><jabber type="connect" ack="local"/></request>
      <transaction name="authenticate">
        <request><jabber type="auth_sasl" ack="local"/></request>
        <request><jabber type="connect" ack="local"/></request>
        <request><jabber type="auth_sasl_bind" ack="local"/></request>
        <request><jabber type="auth_sasl_session" ack="local"/></request>
      </transaction>
      <transaction name="roster"><request><jabber type="iq:roster:get" ack="local"/></request></transaction>
      <request><jabber type="presence:initial" ack="no_ack"/></request>"""
CLOSE = '<transaction name="close"><request><jabber type="close" ack="local"/></request></transaction>'

if MUC:
    SERVICE = a.muc_service or f"conference.{a.domain}"
    ROOM = f"ts{int(time.time())}r%%_room%%"  # new rooms every run
    INTERVAL = a.users / a.rate            # each user's mean pause between two messages
    JOIN_WAIT = 2 * a.arrival_secs + 5     # after its join: every user has joined by then
    # The last user's last message comes before the first user's close.
    TAIL = 2 * a.arrival_secs + int(0.4 * a.messages * INTERVAL) + 5
    DURATION = 2 * a.arrival_secs + JOIN_WAIT + int(1.2 * a.messages * INTERVAL) + TAIL + 30
    lo, hi = max(1, round(0.8 * INTERVAL)), max(1, round(1.2 * INTERVAL))  # whole seconds only
    by_id = "fun({_Pid, DynVars}) -> {ok, Id} = ts_dynvars:lookup(tsung_userid, DynVars), "
    instant = (f"&lt;iq type='set' id='instant' to='{ROOM}@{SERVICE}'&gt;"
               "&lt;query xmlns='http://jabber.org/protocol/muc#owner'&gt;"
               "&lt;x xmlns='jabber:x:data' type='submit'/&gt;&lt;/query&gt;&lt;/iq&gt;")
    SESSION = f"""
    <session probability="100" name="muc" type="ts_jabber" bidi="true">{LOGIN}
      <setdynvars sourcetype="eval" code="{by_id}integer_to_binary(Id rem {a.rooms}) end.">
        <var name="room"/>
      </setdynvars>
      <setdynvars sourcetype="eval" code="{by_id}case Id =&lt; {a.rooms} of true -> &lt;&lt;&quot;1&quot;&gt;&gt;; false -> &lt;&lt;&quot;0&quot;&gt;&gt; end end.">
        <var name="creator"/>
      </setdynvars>
      <if var="creator" eq="0"><thinktime value="2"/></if>
      <transaction name="join">
        <request subst="true"><jabber type="muc:join" ack="local" room="{ROOM}" nick="u%%_tsung_userid%%"/></request>
      </transaction>
      <if var="creator" eq="1">
        <request subst="true"><jabber type="raw" ack="local" data="{instant}"/></request>
      </if>
      <thinktime value="{JOIN_WAIT}"/>
      <for from="1" to="{a.messages}" incr="1" var="i">
        <thinktime min="{lo}" max="{hi}" random="true"/>
        <transaction name="online">
          <request subst="true"><jabber type="muc:chat" ack="no_ack" size="{a.size}" room="{ROOM}" stamped="true"/></request>
        </transaction>
      </for>
      <thinktime value="{TAIL}"/>
      {CLOSE}
    </session>"""
    OPTIONS = f'\n    <option type="ts_jabber" name="muc_service" value="{SERVICE}"/>'
else:
    DURATION = 2 * a.arrival_secs + THINK + a.messages + 30
    SESSION = f"""
    <session probability="100" name="chat" type="ts_jabber" bidi="true">{LOGIN}
      <thinktime value="{THINK}"/>
      <for from="1" to="{a.messages}" incr="1" var="i">
        <transaction name="online">
          <request><jabber type="chat" ack="no_ack" size="{a.size}" destination="online" stamped="true"/></request>
        </transaction>
        <thinktime value="1"/>
      </for>
      <thinktime value="3"/>
      {CLOSE}
    </session>"""
    OPTIONS = ""
if not a.max_secs:
    a.max_secs = min(DURATION + 60, 900)
if a.max_secs < DURATION + 30:
    sys.exit(f"--max-secs must leave Tsung its {DURATION} s and 30 more")

# TSUNG_DUMP=1: Tsung logs every byte it sends and receives (tsung.dump, next to tsung.log).
DUMP = "true" if os.environ.get("TSUNG_DUMP") == "1" else "false"
CONFIG = f"""<?xml version="1.0"?>
<!DOCTYPE tsung SYSTEM "/usr/share/tsung/tsung-1.0.dtd">
<tsung loglevel="warning" dumptraffic="{DUMP}" version="1.0">
  <clients><client host="localhost" use_controller_vm="true" maxusers="{a.users + 10}"/></clients>
  <servers><server host="127.0.0.1" port="{a.port}" type="tcp"/></servers>
  <load duration="{DURATION}" unit="second">
    <arrivalphase phase="1" duration="{2 * a.arrival_secs}" unit="second">
      <users arrivalrate="{a.users / a.arrival_secs:.3f}" unit="second" maxnumber="{a.users}"/>
    </arrivalphase>
  </load>
  <options>
    <option type="ts_jabber" name="global_number" value="{a.users}"/>
    <option type="ts_jabber" name="userid_max" value="{a.users}"/>
    <option type="ts_jabber" name="domain" value="{a.domain}"/>
    <option type="ts_jabber" name="username" value="user"/>
    <option type="ts_jabber" name="passwd" value="perfpass"/>{OPTIONS}
  </options>
  <sessions>{SESSION}
  </sessions>
</tsung>
"""

work = tempfile.mkdtemp(prefix="tsung-run-")
cfg = os.path.join(work, "chat.xml")
open(cfg, "w").write(CONFIG)


def server_cpu():
    """utime+stime of the server's processes in seconds (None once one is gone)."""
    total = 0
    for pid in a.server_pid:
        try:
            f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        total += int(f[11]) + int(f[12])
    return total / os.sysconf("SC_CLK_TCK")


samples, stop = [], threading.Event()


def sampler():
    while not stop.is_set():
        c = server_cpu()
        if c is not None:
            samples.append((time.time(), c))
        stop.wait(0.5)


threading.Thread(target=sampler, daemon=True).start()
# Tsung's controller writes its statistics every `dumpstats_interval` ms (an application
# environment variable, not a command-line option in 1.7); -n: no web GUI (it would listen on
# every interface).
cmd = ["tsung", "-n", "-f", cfg, "-l", work, "start"]
env = dict(os.environ, ERL_FLAGS="-tsung_controller dumpstats_interval 5000")
t0 = time.time()
proc = subprocess.Popen(cmd, stdout=open(os.path.join(work, "tsung.out"), "w"),
                        stderr=subprocess.STDOUT, env=env, start_new_session=True)
try:
    proc.wait(timeout=a.max_secs)
except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
stop.set()
logs = [os.path.join(d, "tsung.log") for d, _, fs in os.walk(work) if "tsung.log" in fs]
if not logs:
    sys.exit(f"tsung wrote no tsung.log (see {work}/tsung.out)")
text = open(logs[0]).read()

# Statistics blocks: "# stats: dump at T" then "stats: NAME COUNT ..." (COUNT: in this interval;
# for counters, the second number is the total).
dumps = []
for block in re.split(r"^# stats: dump at ", text, flags=re.M)[1:]:
    t = float(block.split("\n", 1)[0])
    st = {}
    for m in re.finditer(r"^stats: (\S+) (.*)$", block, re.M):
        st[m.group(1)] = [float(x) for x in m.group(2).split()]
    dumps.append((t, st))


def cpu_at(t):
    """Server CPU at wall time t, interpolated between samples."""
    prev = None
    for ts, c in samples:
        if ts >= t:
            if prev is None:
                return c
            return prev[1] + (c - prev[1]) * (t - prev[0]) / max(ts - prev[0], 1e-9)
        prev = (ts, c)
    return prev[1] if prev else None


def total(name, col=1):
    """A counter's total (or, with col=6, a sample statistic's count) from the last dump."""
    for _, st in reversed(dumps):
        if name in st:
            return st[name][col]
    return None


# The window: the plateau of Tsung's send rate, the dumps whose interval carried at least 90% of
# the highest rate of any interval (every user that logged in is sending; a server that lost
# sessions has a lower plateau, and its errors say why).
logged_in = total("tr_authenticate", 6) or 0
fig = {}
if MUC:
    # From the interval where sending starts to the last one with a message sent.
    sends = [i for i, (_, st) in enumerate(dumps) if i and st.get("tr_online", [0])[0] > 0]
    full = [sends[0] - 1, sends[-1]] if sends else []
    # Deliveries: every message of a joined user reaches the joined users of its room. With
    # users missing (a join refused or a connection lost), it is the expectation over the rooms.
    joined = total("tr_join", 6) or 0
    occupants = joined / a.rooms
    if full:
        i0, i1 = full
        span = range(i0 + 1, i1 + 1)
        sent = sum(dumps[i][1].get("tr_online", [0])[0] for i in span)
        seen = sum(dumps[i][1].get("xmpp_msg_latency", [0])[0] for i in span)
        closed = sum(dumps[i][1].get("tr_close", [0])[0] for i in range(i1 + 1))
        c0, c1 = cpu_at(dumps[i0][0]), cpu_at(dumps[i1][0])
        secs = dumps[i1][0] - dumps[i0][0]
        fig["window_secs"] = secs
        fig["messages_per_s"] = sent / secs if secs else None
        delivered = sent * (joined / a.users) * occupants
        fig["deliveries"] = delivered
        fig["received_ratio"] = seen / delivered if delivered else None
        fig["server_cpu_us_per_delivery"] = ((c1 - c0) * 1e6 / delivered
                                             if delivered and c0 is not None else None)
        fig["server_cpu_us_per_msg"] = (c1 - c0) * 1e6 / sent if sent and c0 is not None else None
        fig["server_cpu_cores"] = (c1 - c0) / secs if secs and c0 is not None else None
        fig["closed_in_window"] = closed
    fig["joined"] = joined
rates = [st.get("tr_online", [0])[0] / max(t - dumps[i - 1][0], 1e-9) if i else 0.0
         for i, (t, st) in enumerate(dumps)]
top = max(rates, default=0.0)
if not MUC:
    full = [i for i, r in enumerate(rates) if i > 0 and top > 0 and r >= 0.9 * top]
if not MUC and len(full) >= 2:
    i0, i1 = full[0], full[-1]
    sent = sum(dumps[i][1].get("tr_online", [0])[0] for i in range(i0 + 1, i1 + 1))
    c0, c1 = cpu_at(dumps[i0][0]), cpu_at(dumps[i1][0])
    secs = dumps[i1][0] - dumps[i0][0]
    fig["window_secs"] = secs
    fig["messages_per_s"] = sent / secs if secs else None
    fig["server_cpu_us_per_msg"] = (c1 - c0) * 1e6 / sent if sent and c0 is not None else None
    fig["server_cpu_cores"] = (c1 - c0) / secs if secs and c0 is not None else None


def mean_over_run(name):
    """Tsung's 'stats: name n mean stddev max min global_mean global_n': the run's mean."""
    for _, st in reversed(dumps):
        if name in st and len(st[name]) >= 7:
            return st[name][5]
    return None


fig["users_logged_in"] = logged_in
fig["login_ms_mean"] = mean_over_run("tr_authenticate")
fig["latency_mean_ms"] = mean_over_run("xmpp_msg_latency")
fig["messages_sent"] = sum(st.get("tr_online", [0])[0] for _, st in dumps)
errors = {k: v[1] for _, st in dumps for k, v in st.items() if k.startswith("error_")}
fig["errors"] = sum(errors.values())
fig["wall_secs"] = time.time() - t0
doc = {
    "scenario": "tsung-muc" if MUC else "tsung-chat",
    "target": {"label": a.label, "port": a.port, "server_pids": a.server_pid, "tls": "Starttls",
               "mech": "PLAIN", "domain": a.domain},
    "params": {"users": a.users, "arrival_secs": a.arrival_secs, "messages": a.messages,
               "size": a.size, "tsung_log": logs[0],
               **({"rooms": a.rooms, "rate": a.rate} if MUC else {})},
    "errors_by_kind": errors,
    "figures": list(fig),
    "median": fig,
    "runs": [fig],
    "unix_time": int(t0),
}
json.dump(doc, open(a.json, "w"), indent=2, sort_keys=True)
for k, v in fig.items():
    print(f"{k:28} {v if v is None else round(v, 3)}")
if errors:
    print("errors:", errors)
if len(full) < 2:
    print(f"no steady window (a plateau of two dumps) in Tsung's statistics: see {logs[0]}")
    sys.exit(1)
if MUC and fig["joined"] < a.users:
    print(f"only {fig['joined']:.0f} of {a.users} users joined a room: deliveries estimated (see {logs[0]})")
if MUC and (fig["joined"] < 0.9 * a.users or fig.get("closed_in_window")):
    print(f"{fig.get('closed_in_window', 0):.0f} users left before the last message, or fewer than 90% "
          "joined: the deliveries counted did not all happen")
    sys.exit(1)
