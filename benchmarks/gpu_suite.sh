#!/usr/bin/env bash
# Every GPU speed check of the pipeline in one go (stages 3, 5, 6 and 7), for a machine with one
# CUDA GPU. Each benchmark has its own time limit so one stall does not cost the others; logs and
# JSON go to $OUT (default ./bench_out).
#   bash benchmarks/gpu_suite.sh            # full sizes (512 px)
#   SMALL=1 bash benchmarks/gpu_suite.sh    # tiny sizes, to check the script itself on a CPU
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
W=${WORKERS:-$(( $(nproc) > 12 ? 12 : $(nproc) ))}

if [[ -n "${SMALL:-}" ]]; then
  DEV=cpu; RNN=(--input-dim 64 --hidden 16 --batch 4 --max-len 60 --min-len 20)
  CNN=(--size 64 --batch 4 --steps 2 --warmup 1 --images 32 --jpeg-size 64 --workers 2)
  DUMP=(--size 64 --series 2 --slices 20 --workers 2)
  INF=(--size 64 --studies 2 --slices 12 --workers 2)
else
  DEV=cuda; RNN=(--input-dim 2560 --hidden 128 --batch 64 --repeats 5 --warmup 2)
  CNN=(--size 512 --batch 32 --steps 30 --images 1024 --workers "$W")
  DUMP=(--size 512 --series 8 --slices 250 --workers "$W")
  INF=(--size 512 --studies 8 --slices 200 --workers "$W")
fi

failed=0
step() {  # step NAME LIMIT_S CMD...
  local name=$1 limit=$2; shift 2
  echo "=== $name"
  local t0=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "=== $name rc=$rc in $((SECONDS - t0)) s"
  [ "$rc" -eq 0 ] || failed=$((failed + 1))
}

{ nvidia-smi -L 2>/dev/null || true; "$PY" -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, 'cuda', torch.cuda.is_available())"; } | tee "$OUT/env.log"
step rnn 90 "$PY" benchmarks/bench_rnn.py --device "$DEV" "${RNN[@]}"
step train_cnn 150 "$PY" benchmarks/bench_train_cnn.py --device "$DEV" "${CNN[@]}" --json "$OUT/train_cnn.json"
step dump 90 "$PY" benchmarks/bench_dump.py --device "$DEV" "${DUMP[@]}"
step inference 120 "$PY" benchmarks/bench_inference.py --device "$DEV" "${INF[@]}"
step inference_compile 150 "$PY" benchmarks/bench_inference.py --device "$DEV" "${INF[@]}" --compile
grep -hE "^(original|ours|dump_embeddings|inference|loader|step|layered|packed|padded)" "$OUT"/*.log || true
echo "$failed step(s) failed or ran out of time"
[ "$failed" -eq 0 ]
