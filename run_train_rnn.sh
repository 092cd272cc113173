#!/usr/bin/env bash
# Stage 6: train the six LSTM heads ({bce, focal} x folds 0-2) on the dumped CNN embeddings.
# Usage: [CONFIGS=DIR] [NPROC=N] ./run_train_rnn.sh [key=value ...]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/scripts/wrapper_common.sh"
for variant in rexnet200_bce rexnet200_focal; do
  for fold in 0 1 2; do
    echo "== train_rnn $variant fold $fold"
    "${LAUNCH[@]}" "$REPO/src/train_rsna.py" -c "$CONFIGS/train_rnn/$variant.yml" \
      dataset.fold="$fold" "$@"
  done
done
