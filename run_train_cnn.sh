#!/usr/bin/env bash
# Stage 3: train the six CNN runs, {bce, focal} x folds 0-2, one run folder each under
# output/train_cnn/<run>/fold_<k>. Config paths are relative to the current folder, so run
# this from the folder that holds data/ (the repo, or a workspace such as the demo's).
# Usage: [CONFIGS=DIR] [NPROC=N] [JOBS=N] [FOLDS="0 1 2"] [VARIANTS="bce focal"] ./run_train_cnn.sh [key=value ...]
#   CONFIGS  config root (default: the repo's configs/); reads $CONFIGS/train_cnn/rexnet200_<variant>.yml
#   NPROC    processes (GPUs) per run; N > 1 trains with DDP under torchrun
#   JOBS     runs at once (default 1); on a CPU machine each gets cores/JOBS threads
#   PY       interpreter (default: the repo's .venv, else python3)
# Extra args are config overrides. Finished runs are skipped, interrupted ones resume.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/scripts/wrapper_common.sh"
run_each train_cnn "$REPO/src/train_rsna.py" "$CONFIGS/train_cnn" "$@"
