#!/usr/bin/env bash
# Every GPU speed check of the pipeline in one go (stages 3, 5, 6 and 7), for a machine with one
# CUDA GPU: each stage's rate next to its ceiling measured in the same run (the plain model, no
# data loading: benchmarks/ceiling.py), and one profiler trace of inference. Each benchmark has
# its own time limit so one stall does not cost the others; the limits add up to 465 s, compile
# warm-ups included, so the whole suite fits in 8 minutes. Logs, JSON and the trace go to $OUT
# (default ./bench_out); the summary at the end collects the "... of ceiling ..." lines.
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
  DEV=cpu; SCALE=3  # a busy CPU gets three times the GPU limits
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # spinning threads on a busy CPU stall every step
  CEIL=(--size 64 --batches 4,8 --steps 2)
  RNN=(--input-dim 64 --hidden 16 --batch 4 --max-len 60 --min-len 20)
  CNN=(--size 64 --batch 4 --steps 2 --warmup 1 --images 32 --jpeg-size 64 --workers 2)
  DUMP=(--size 64 --series 2 --slices 20 --workers 2 --chunk 8 --ceiling-steps 2)
  INF=(--size 64 --studies 2 --slices 12 --workers 2 --chunk 8 --ceiling-steps 2)
  PROF=(--size 64 --studies 2 --slices 8 --pairs 2 --workers 0 --chunk 8)
  # Compiling rexnet_200 on a CPU takes minutes: here the compile step runs its code path
  # with torch.compile switched off.
  NOCOMPILE=(env TORCH_COMPILE_DISABLE=1)
else
  DEV=cuda; SCALE=1
  CEIL=(--size 512 --batches 32,64,128,256 --steps 5)
  RNN=(--input-dim 2560 --hidden 128 --batch 64 --repeats 5 --warmup 2)
  CNN=(--size 512 --batch 32 --steps 20 --images 512 --workers "$W")
  DUMP=(--size 512 --series 8 --slices 250 --workers "$W")
  INF=(--size 512 --studies 8 --slices 200 --workers "$W")
  PROF=(--size 512 --studies 2 --slices 160 --workers "$W")
  NOCOMPILE=()
fi

failed=0
step() {  # step NAME LIMIT_S CMD...
  local name=$1 limit=$(( $2 * SCALE )); shift 2
  echo "=== $name (limit $limit s)"
  local t0=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "=== $name rc=$rc in $((SECONDS - t0)) s"
  [ "$rc" -eq 0 ] || failed=$((failed + 1))
}

{ nvidia-smi -L 2>/dev/null || true; "$PY" -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, 'cuda', torch.cuda.is_available())"; } | tee "$OUT/env.log"
step ceiling 25 "$PY" benchmarks/ceiling.py --device "$DEV" "${CEIL[@]}"
step rnn 40 "$PY" benchmarks/bench_rnn.py --device "$DEV" "${RNN[@]}"
step train_cnn 150 "$PY" benchmarks/bench_train_cnn.py --device "$DEV" "${CNN[@]}" --json "$OUT/train_cnn.json"
step dump 45 "$PY" benchmarks/bench_dump.py --device "$DEV" "${DUMP[@]}"
step dump_compile 80 "${NOCOMPILE[@]}" "$PY" benchmarks/bench_dump.py --device "$DEV" "${DUMP[@]}" --compile
step inference 90 "$PY" benchmarks/bench_inference.py --device "$DEV" "${INF[@]}"
step profile 35 "$PY" benchmarks/profile_inference.py --device "$DEV" "${PROF[@]}" --out "$OUT"
echo "=== summary"
grep -hE "^(ceiling forward|original|ours|dump_embeddings|inference|loader|step|layered|packed|padded)" "$OUT"/*.log | grep -v " of ceiling " || true
grep -h " of ceiling " "$OUT"/*.log || true
echo "trace: $OUT/inference_trace.json"
echo "$failed step(s) failed or ran out of time"
[ "$failed" -eq 0 ]
