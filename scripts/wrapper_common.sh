# Sourced by run_train_cnn.sh, run_dump_embeddings.sh and run_train_rnn.sh.
# Sets REPO, CONFIGS (default: the repo's configs), PY and the launcher LAUNCH: plain python,
# or torchrun with NPROC processes when NPROC > 1. The caller's CWD is kept: config paths are
# relative to it, so a run can live in any folder.
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONFIGS="${CONFIGS:-$REPO/configs}"
NPROC="${NPROC:-1}"
if [ -z "${PY:-}" ]; then
  if [ -x "$REPO/.venv/bin/python" ]; then PY="$REPO/.venv/bin/python"; else PY=python3; fi
fi
if [ "$NPROC" -gt 1 ]; then
  # --standalone picks a free rendezvous port, so several jobs can run on one machine.
  LAUNCH=("$PY" -m torch.distributed.run --standalone --nproc_per_node="$NPROC")
else
  LAUNCH=("$PY")
fi
