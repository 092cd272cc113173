#!/usr/bin/env bash
# Set up the virtual env if needed (.venv beside this script; in the Docker image its own
# python), then run the test suite.
# Usage: ./run_tests.sh [pytest args]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/scripts/setup_venv.sh"
cd "$HERE"
if ! "$PY" -c "import pytest" 2>/dev/null; then
  echo "error: $PY has no pytest (in the Docker image: build it with --build-arg WITH_TESTS=1)" >&2
  exit 2
fi
export WANDB_MODE=disabled
# The suite's temporary folders peak at about 3.8 GB (real rexnet_200 checkpoints): say so up
# front rather than fail halfway with "No space left on device".
tmp_root="${PYTEST_DEBUG_TEMPROOT:-${TMPDIR:-/tmp}}"
free_kb="$(df -Pk "$tmp_root" 2>/dev/null | awk 'NR == 2 {print $4}')"
if [ -n "$free_kb" ] && [ "$free_kb" -lt 4000000 ]; then
  echo "warning: $tmp_root has $((free_kb / 1024)) MB free; the tests need about 4 GB there" >&2
fi
set +e
"$PY" -m pytest "$@"
rc=$?
set -e
# pytest exit 5 = no tests collected: a broken suite, not a pass.
[ "$rc" -eq 5 ] && echo "error: pytest collected no tests" >&2
exit "$rc"
