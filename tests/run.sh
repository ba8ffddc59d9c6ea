#!/usr/bin/env bash
# The whole test suite, as the README and CI run it:
#   1. formatting check, 2. unit and Rust black-box tests (cargo test),
#   3. the slixmpp / raw-XML interop suite against a real `starling`,
#   4. a seconds-long smoke of every bench scenario against `starling`.
# Everything it needs (Python packages) is installed by the scripts it calls.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
TARGET="${CARGO_TARGET_DIR:-target}"
case "$TARGET" in /*) ;; *) TARGET="$PWD/$TARGET" ;; esac

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo build"
cargo build --workspace --all-targets

echo "== cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets -- -D warnings

echo "== cargo test"
cargo test --workspace

export STARLING_BIN="$TARGET/debug/starling"
echo "== interop suite (slixmpp + raw XML) against $STARLING_BIN"
tests/interop/run.sh

if [ -x bench/ci-smoke.sh ]; then
  echo "== bench smoke against starling"
  bench/ci-smoke.sh
fi
