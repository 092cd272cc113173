#!/usr/bin/env bash
# Stage 6: train the six LSTM heads, {bce, focal} x folds 0-2, on the dumped embeddings of the
# matching CNN runs (one run folder each under output/train_rnn/). Paths in the configs are
# relative to the current folder, so run this from the folder that holds data/ and dump/.
#
#   ./run_train_rnn.sh [key.sub=value ...]        # extra args are config overrides
#   CONFIGS=DIR     config root (default: the repo's configs/); uses DIR/train_rnn/rexnet200_{bce,focal}.yml
#   NPROC=N         processes per run; N > 1 runs DDP through torchrun
#   JOBS=N          runs at once (default 1); on a CPU machine each gets cores/JOBS threads
#   FOLDS="0 1 2"   VARIANTS="bce focal"   subsets (head options: VARIANTS="bce_gru bce_transformer bce_metricloss")
#   PY=python       interpreter (default: the repo's .venv, else python3)
# A finished run is skipped and an interrupted one resumes, so rerunning is safe.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/scripts/wrapper_common.sh"
run_each train_rnn "$REPO/src/train_rsna.py" "$CONFIGS/train_rnn" "$@"
