#!/usr/bin/env bash
# Stage 5: dump per-slice embeddings of the six CNN runs ({bce, focal} x folds 0-2).
# Usage: [CONFIGS=DIR] [NPROC=N] ./run_dump_embeddings.sh [key=value ...]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/scripts/wrapper_common.sh"
for variant in rexnet200_bce rexnet200_focal; do
  for fold in 0 1 2; do
    echo "== dump_embeddings $variant fold $fold"
    "${LAUNCH[@]}" "$REPO/src/dump_embeddings.py" -c "$CONFIGS/dump_embeddings/$variant.yml" \
      dataset.fold="$fold" "$@"
  done
done
