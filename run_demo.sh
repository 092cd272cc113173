#!/usr/bin/env bash
# The whole pipeline on generated CTPA-like data, on CPU, in a workspace folder.
# Usage: [PROFILE=NAME] ./run_demo.sh [WORKSPACE]   (reruns skip finished work)
# PROFILE: the data set, one of configs/profiles.yml (default demo: 240 + 40 studies of 8-12
# slices; bench, bench_thin); the workspace defaults to the profile's name in the repo (demo/).
# Env overrides of the profile: N_TRAIN, N_TEST, SLICES_MIN and SLICES_MAX (together), MATRIX,
# POSITIVE_FRACTION, SLICE_SPACING (mm). JOBS (2); CONFIGS (configs/demo: its experiment.yml
# sets the model sizes). wandb is off unless WANDB_MODE=offline is set.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PROFILE="${PROFILE:-demo}"
# Checked before anything is made, so that a mistyped name leaves no workspace behind.
if ! [[ $PROFILE =~ ^[A-Za-z0-9_-]+$ ]] || ! grep -q "^$PROFILE:" "$HERE/configs/profiles.yml"; then
  echo "error: run_demo.sh: PROFILE=$PROFILE is not a profile of $HERE/configs/profiles.yml" >&2
  exit 2
fi
if [[ -n ${SLICES_MIN:-}${SLICES_MAX:-} && ( -z ${SLICES_MIN:-} || -z ${SLICES_MAX:-} ) ]]; then
  echo "error: run_demo.sh: set SLICES_MIN and SLICES_MAX together" >&2
  exit 2
fi
source "$HERE/scripts/setup_venv.sh"
WS="${1:-$HERE/$PROFILE}"
mkdir -p "$WS"
cd "$WS"
# JOBS=2: two one-thread runs side by side get more done on 2 cores than one two-thread run.
export CONFIGS="${CONFIGS:-$HERE/configs/demo}" WANDB_MODE="${WANDB_MODE:-disabled}" JOBS="${JOBS:-2}" PY
SRC="$HERE/src"
step() { echo; echo "=== $* ($(date +%T))"; }
start=$(date +%s)

step "synthetic data ($PROFILE) -> $WS/data"
# Kept when data/ already holds a set made with these parameters; an older or different set is
# an error that says so (remove the workspace, or pass another one).
over=()
[ -n "${N_TRAIN:-}" ] && over+=(--n-train "$N_TRAIN")
[ -n "${N_TEST:-}" ] && over+=(--n-test "$N_TEST")
[ -n "${SLICES_MIN:-}" ] && over+=(--slices "$SLICES_MIN" "$SLICES_MAX")
[ -n "${MATRIX:-}" ] && over+=(--matrix "$MATRIX")
[ -n "${POSITIVE_FRACTION:-}" ] && over+=(--positive-fraction "$POSITIVE_FRACTION")
[ -n "${SLICE_SPACING:-}" ] && over+=(--slice-spacing "$SLICE_SPACING")
"$PY" "$SRC/make_synthetic_data.py" data --profile "$PROFILE" ${over[@]+"${over[@]}"}
step "stage 1: DICOM -> JPEG";        "$PY" "$SRC/make_image.py" -c "$CONFIGS/make_image.yml"
step "stage 2: folds";                "$PY" "$SRC/make_csv.py" -c "$CONFIGS/make_csv.yml"
step "stage 3: six CNN backbones";    "$HERE/run_train_cnn.sh"
step "stage 4: npz per series";       "$PY" "$SRC/make_npz.py" -c "$CONFIGS/make_npz.yml"
step "stage 5: six embedding dumps";  "$HERE/run_dump_embeddings.sh"
step "stage 6: six LSTM heads";       "$HERE/run_train_rnn.sh"
step "stage 7: inference on the test DICOMs"
"$PY" "$SRC/inference.py" -c "$CONFIGS/inference.yml"

step "scores (weighted log loss, lower is better)"
"$PY" "$SRC/evaluate.py" --labels data/test_labels.csv output/inference/rexnet200/submission.csv \
  --prior data/train.csv --json output/test_score.json
fold_csv=$("$PY" "$SRC/make_csv.py" -c "$CONFIGS/make_csv.yml" --print-output)
"$PY" "$SRC/evaluate.py" --labels "$fold_csv" \
  output/train_rnn/*/fold_*/oof.csv --prior data/train.csv --json output/cv_score.json

step "one study: report and viewer"
study_dir=$(find data/test -mindepth 2 -maxdepth 2 -type d | sort | sed -n 1p)  # sed reads all: no SIGPIPE under pipefail
"$PY" "$SRC/predict_study.py" "$study_dir" -c "$CONFIGS/inference.yml" --out output/predict_study

echo
echo "demo ($PROFILE) finished in $(( $(date +%s) - start )) s; outputs in $WS:"
echo "  data/ (DICOM, JPEG, folds, npz)  output/train_cnn  dump/v1  output/train_rnn"
echo "  output/inference/rexnet200/submission.csv  output/predict_study/{prediction.json,report.png}"
echo "  output/predict_study/viewer.html (open in a browser: slices, probabilities, activation maps)"
# Last: the three scores side by side; exits non-zero if the test score is not below 0.7x the prior.
"$PY" "$HERE/scripts/demo_summary.py" output/test_score.json output/cv_score.json
