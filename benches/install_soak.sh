#!/usr/bin/env bash
# kill -9 soak for the power-safe install (issue 8): 100 random kill points while a child
# process commits version after version; after each kill the install state reads, the
# active version's files match it, and a restarted daemon serves exactly that version.
# Then the real daemon binary, killed at random moments of its pull/validate/commit
# (DAEMON_POINTS, default 20). The test suite runs 20 and 8 points
# (daemon/tests/registry_killpoints.rs).
#
#   benches/install_soak.sh            # 100 points
#   POINTS=500 benches/install_soak.sh
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
export EDGEINFER_KILL_POINTS="${POINTS:-100}"
export EDGEINFER_DAEMON_KILL_POINTS="${DAEMON_POINTS:-20}"
cargo test -p edgeinferd --test registry_killpoints -- --nocapture --test-threads=1 \
    kill_9_ 2>&1 | grep -E "kill points|test result|panicked"
