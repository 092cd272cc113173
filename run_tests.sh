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
set +e
"$PY" -m pytest "$@"
rc=$?
set -e
# pytest exit 5 = no tests collected: a broken suite, not a pass.
[ "$rc" -eq 5 ] && echo "error: pytest collected no tests" >&2
exit "$rc"
