# Sourced by run_tests.sh and run_demo.sh: create/refresh .venv beside the repo, export PY.
# Reinstalls only when requirements files change (a stamp file holds their checksum).
# RSNA_PE_SYSTEM_PYTHON=1 (set in the Docker image, whose python already holds the
# requirements): no venv is made or touched and PY is that python.
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$REPO/.venv}"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if [ "${RSNA_PE_SYSTEM_PYTHON:-0}" = 1 ]; then
  PY="$(command -v "$PYTHON")"
else
  stamp="$VENV/.requirements.sha"
  want="$(cat "$REPO/requirements.txt" "$REPO/requirements-dev.txt" | sha256sum | cut -d' ' -f1)"
  if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "setting up $VENV (first run takes a few minutes)" >&2
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -r "$REPO/requirements-dev.txt"
    echo "$want" > "$stamp"
  fi
  PY="$VENV/bin/python"
fi
export PY
