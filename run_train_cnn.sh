#!/usr/bin/env bash
# Stage 3: train the six CNN runs, {bce, focal} x folds 0-2 (one run folder each under
# output/train_cnn/). Paths in the configs are relative to the current folder, so run this
# from the folder that holds data/ (the repo, or a workspace such as the demo's).
#
#   ./run_train_cnn.sh [key.sub=value ...]        # extra args are config overrides
#   CONFIGS=DIR     config root (default: the repo's configs/); uses DIR/train_cnn/rexnet200_{bce,focal}.yml
#   NPROC=N         GPUs (processes) per run; N > 1 runs DDP through torchrun
#   FOLDS="0 1 2"   VARIANTS="bce focal"   subsets
#   PY=python       interpreter (default: the repo's .venv, else python3)
# A finished run is skipped and an interrupted one resumes, so rerunning is safe.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CONFIGS="${CONFIGS:-$HERE/configs}"
NPROC="${NPROC:-1}"
FOLDS="${FOLDS:-0 1 2}"
VARIANTS="${VARIANTS:-bce focal}"
if [ -z "${PY:-}" ]; then
  if [ -x "$HERE/.venv/bin/python" ]; then PY="$HERE/.venv/bin/python"; else PY=python3; fi
fi

free_port() {
  "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

for variant in $VARIANTS; do
  cfg="$CONFIGS/train_cnn/rexnet200_$variant.yml"
  [ -f "$cfg" ] || { echo "error: config not found: $cfg" >&2; exit 2; }
  for fold in $FOLDS; do
    echo "=== train_cnn rexnet200_$variant fold $fold" >&2
    if [ "$NPROC" -gt 1 ]; then
      "$PY" -m torch.distributed.run --nnodes=1 --nproc_per_node="$NPROC" \
        --master_addr=127.0.0.1 --master_port="$(free_port)" \
        "$HERE/src/train_rsna.py" -c "$cfg" "dataset.fold=$fold" "$@"
    else
      "$PY" "$HERE/src/train_rsna.py" -c "$cfg" "dataset.fold=$fold" "$@"
    fi
  done
done
