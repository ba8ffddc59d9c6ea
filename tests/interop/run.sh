#!/usr/bin/env bash
# Run the black-box interop suite.
#   tests/interop/run.sh [pytest args...]
# XMPP_TARGET=starling (default: starts target/debug/starling, or $STARLING_BIN)
# XMPP_TARGET=prosody  (validates the tests against a private Prosody; apt-get install prosody)
# INTEROP_JOBS=N       parallel pytest-xdist workers (default 2; 0 = serial)
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
"$HERE/setup.sh"
cd "$HERE"
TARGET="${XMPP_TARGET:-starling}"
if [ "$TARGET" = starling ]; then
  BIN="${STARLING_BIN:-$(cd "$HERE/../.." && pwd)/target/debug/starling}"
  if [ -z "${STARLING_BIN:-}" ] && [ "${INTEROP_BUILD:-1}" = 1 ]; then
    (cd "$HERE/../.." && cargo build -q -p starling --bin starling)
  fi
  [ -x "$BIN" ] || { echo "starling binary not found at $BIN" >&2; exit 1; }
  export STARLING_BIN="$BIN"
elif [ "$TARGET" = prosody ]; then
  command -v prosody >/dev/null || { echo "prosody not installed (apt-get install -y prosody)" >&2; exit 1; }
fi
JOBS="${INTEROP_JOBS:-2}"
XDIST=()
if [ "$JOBS" != 0 ]; then XDIST=(-n "$JOBS" --dist loadfile); fi
exec "$HERE/.venv/bin/python" -m pytest --timeout=60 -W ignore::DeprecationWarning "${XDIST[@]}" "$@"
