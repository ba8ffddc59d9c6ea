#!/usr/bin/env bash
# Create tests/interop/.venv with the pinned interop-test dependencies.
# Idempotent: returns at once when the venv already has exactly these pins.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
# The cluster tests need `ip` (iproute2: network namespaces for the partition
# tests) and HAProxy (the load balancer in front of the nodes), from Debian.
missing=()
command -v ip >/dev/null || missing+=(iproute2)
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
# Federation interop (test_s2s_interop.py) runs Prosody and ejabberd as other domains' servers.
command -v prosody >/dev/null || missing+=(prosody)
command -v ejabberdctl >/dev/null || [ -x /usr/sbin/ejabberdctl ] || missing+=(ejabberd)
command -v openssl >/dev/null || missing+=(openssl)
# strace counts the connections a node opens (test_cluster_failover.py).
command -v strace >/dev/null || missing+=(strace)
if [ ${#missing[@]} -gt 0 ] && command -v apt-get >/dev/null; then
  # The packages' own services must not start (they would take 5222/5269): the tests run
  # private copies. policy-rc.d refuses service starts during the install, then goes.
  made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ] && [ -w /usr/sbin ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && made_policy=1
  fi
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}") >/dev/null \
    || echo "setup.sh: could not install ${missing[*]}; the tests that need them will fail" >&2
  [ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
fi
VENV="$HERE/.venv"
PINS="slixmpp==1.10.0 aiohttp==3.12.15 pytest==8.3.5 pytest-timeout==2.4.0 pytest-xdist==3.6.1"
STAMP="$VENV/.pins"
if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$PINS" ]; then
  exit 0
fi
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check $PINS
echo "$PINS" > "$STAMP"
