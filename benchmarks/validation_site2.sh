#!/usr/bin/env bash
# The worked run of docs/validation.md: the demo's models on a second synthetic site (the same
# kind of patients through another scanner), on the same patients through the demo's scanner,
# on a shifted site with the competition's share of positive exams, and on the demo's own test
# set; calibration on ten calibration splits of each shifted site; both sites by subgroup.
# Usage: benchmarks/validation_site2.sh DEMO_WORKSPACE WORK_DIR
#   DEMO_WORKSPACE: a finished ./run_demo.sh workspace (read only: its models are linked, not copied)
#   WORK_DIR: one workspace per site, and results/<run>/ (metrics.json, report.md, report.html, plots)
# A rerun keeps the generated sets and submissions (their records match) and redoes the rest.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$HERE/scripts/setup_venv.sh"
DEMO="$(cd "$1" && pwd)"
mkdir -p "$2"
WORK="$(cd "$2" && pwd)"
SRC="$HERE/src"
SUB=output/inference/rexnet200/submission.csv
OPS="$WORK/shifted/output/train_rnn"  # a run folder of the shifted workspace: gets operating_points.json
# The second site's scanner: noisier, sharper kernel, CT numbers 50 HU high, slices 1.5x
# thicker than their spacing, and other header tags.
SHIFT=(--noise-scale 2 --hu-offset 50 --thickness-factor 1.5 --sharpen 1
       --manufacturer OTHERVENDOR --model "SYNTH-CT 2" --kvp 80 --kernel SHARP)

site() {  # NAME STUDIES SEED POSITIVE_FRACTION [generator options]: data/test + the demo's models
  local ws="$WORK/$1" n="$2" seed="$3" pos="$4"; shift 4
  echo "== site $ws"
  mkdir -p "$ws/output/train_rnn"
  ln -sfn "$DEMO/output/train_cnn" "$ws/output/train_cnn"
  for run in "$DEMO"/output/train_rnn/*/; do ln -sfn "${run%/}" "$ws/output/train_rnn/"; done
  (cd "$ws" && "$PY" "$SRC/make_synthetic_data.py" data --n-train 0 --n-test "$n" --slices 8 12 \
     --matrix 256 --positive-fraction "$pos" --seed "$seed" "$@" \
   && "$PY" "$SRC/inference.py" -c "$HERE/configs/demo/inference.yml")
}

validate() {  # NAME LABELS PREDICTIONS [options]
  local name="$1" labels="$2" preds="$3"; shift 3
  echo "== validate_site $name $*"
  "$PY" "$SRC/validate_site.py" --labels "$labels" "$preds" --out "$WORK/results/$name" \
    --operating-points "$OPS" "$@"
}

site shifted 60 1 0.5 "${SHIFT[@]}"
site unshifted 60 1 0.5
site shifted_low_prevalence 100 2 1/3 "${SHIFT[@]}"
echo "== operating points from the demo's out-of-fold files"
"$PY" "$SRC/validate_site.py" operating-points --labels "$DEMO/data/train.csv" \
  "$DEMO"/output/train_rnn/*/fold_*/oof.csv --out "$OPS"

validate demo_test "$DEMO/data/test_labels.csv" "$DEMO/$SUB"
validate unshifted "$WORK/unshifted/data/test_labels.csv" "$WORK/unshifted/$SUB"
for s in shifted shifted_low_prevalence; do
  validate "$s" "$WORK/$s/data/test_labels.csv" "$WORK/$s/$SUB" --calibrate-split 0.5 --seed 0
  for seed in 1 2 3 4 5 6 7 8 9; do  # other calibration splits (fewer resamples: only the split matters)
    echo "== $s, calibration split seed $seed"
    validate "$s.seed$seed" "$WORK/$s/data/test_labels.csv" "$WORK/$s/$SUB" --calibrate-split 0.5 \
      --seed "$seed" --n-boot 200 | grep "^calibration"
  done
done
echo "== held-out calibration over the ten splits (seeds 0-9) of each shifted site"
"$PY" - "$WORK/results" <<'PYEOF'
import json, sys
from pathlib import Path
root = Path(sys.argv[1])
for site in ("shifted", "shifted_low_prevalence"):
    runs = [root / site] + [root / f"{site}.seed{seed}" for seed in range(1, 10)]
    cal = [json.loads((r / "metrics.json").read_text())["calibration"]["labels"] for r in runs]
    for label in cal[0]:
        rows = [c[label] for c in cal if label in c]
        for key in ("ece", "brier", "log_loss"):
            b, a = [r["before"][key] for r in rows], [r["after"][key] for r in rows]
            print(f"{site} {label} {key}: mean {sum(b) / len(b):.3f} -> {sum(a) / len(a):.3f}, "
                  f"lower in {sum(y < x for x, y in zip(b, a))} of {len(rows)} splits")
PYEOF

# Both sites in one report, grouped by the scanner fields read from the DICOM headers.
both="$WORK/both"
mkdir -p "$both"
"$PY" "$SRC/validate_site.py" acquisition "$DEMO/data/test" --out "$both/a.csv"
"$PY" "$SRC/validate_site.py" acquisition "$WORK/shifted/data/test" --out "$both/b.csv"
cat "$both/a.csv" <(tail -n +2 "$both/b.csv") > "$both/acquisition.csv"
cat "$DEMO/data/test_labels.csv" <(tail -n +2 "$WORK/shifted/data/test_labels.csv") > "$both/labels.csv"
cat "$DEMO/$SUB" <(tail -n +2 "$WORK/shifted/$SUB") > "$both/submission.csv"
validate both_sites "$both/labels.csv" "$both/submission.csv" --subgroups "$both/acquisition.csv"
