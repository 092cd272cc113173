#!/usr/bin/env bash
# Stage 5: dump per-slice embeddings of the six CNN runs ({bce, focal} x folds 0-2) into
# dump/v1/<run>/fold_<k>/. Run from the folder that holds data/ and output/.
# Usage: [CONFIGS=DIR] [NPROC=N] [JOBS=N] [FOLDS=...] [VARIANTS=...] ./run_dump_embeddings.sh [key=value ...]
#   (the variables as in run_train_cnn.sh). Finished series are skipped.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/scripts/wrapper_common.sh"
run_each dump_embeddings "$REPO/src/dump_embeddings.py" "$CONFIGS/dump_embeddings" "$@"
