#!/usr/bin/env bash
# kill -9 soak for the power-safe install (issue 8): 100 random kill points while a child
# process commits version after version; after each kill the install state reads, the
# active version's files match it, and a restarted daemon serves exactly that version.
# The test suite runs the same check at 20 points (daemon/tests/registry_killpoints.rs).
#
#   benches/install_soak.sh            # 100 points
#   POINTS=500 benches/install_soak.sh
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
export EDGEINFER_KILL_POINTS="${POINTS:-100}"
cargo test -p edgeinferd --test registry_killpoints -- --nocapture \
    kill_9_during_install_leaves_the_old_or_the_new_version 2>&1 | grep -E "kill points|test result|panicked"
