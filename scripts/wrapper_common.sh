# Sourced by run_train_cnn.sh, run_dump_embeddings.sh and run_train_rnn.sh.
# Sets REPO, CONFIGS (default: the repo's configs), PY and the launcher LAUNCH: plain python,
# or torchrun with NPROC processes when NPROC > 1. The caller's CWD is kept: config paths are
# relative to it, so a run can live in any folder.
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONFIGS="${CONFIGS:-$REPO/configs}"
NPROC="${NPROC:-1}"
if [ -z "${PY:-}" ]; then
  if [ -x "$REPO/.venv/bin/python" ]; then PY="$REPO/.venv/bin/python"; else PY=python3; fi
fi
if [ "$NPROC" -gt 1 ]; then
  # --standalone picks a free rendezvous port, so several jobs can run on one machine.
  LAUNCH=("$PY" -m torch.distributed.run --standalone --nproc_per_node="$NPROC")
else
  LAUNCH=("$PY")
fi

# run_each LABEL SCRIPT CONFIG_DIR [override ...]: one run of SCRIPT per variant x fold
# (VARIANTS, default "bce focal"; FOLDS, default "0 1 2"), with CONFIG_DIR/rexnet200_<variant>.yml.
# JOBS=N runs N at a time (a CPU machine gets more done with N one-thread runs than with one
# N-thread run); each then writes output/logs/<label>_<run>_fold<k>.log. A failed run does not
# stop the others; the function returns 1 if any failed.
run_each() {
  local label=$1 script=$2 cfg_dir=$3; shift 3
  local jobs="${JOBS:-1}" rc=0 pids=() names=() logs=()
  local threads=$(( $(nproc) / jobs > 0 ? $(nproc) / jobs : 1 ))
  _reap() {  # wait for the oldest job
    if wait "${pids[0]}"; then echo "   done: ${names[0]}"
    else rc=1; echo "error: ${names[0]} failed: $(tail -n 1 "${logs[0]}") (log: ${logs[0]})" >&2; fi
    pids=("${pids[@]:1}"); names=("${names[@]:1}"); logs=("${logs[@]:1}")
  }
  for variant in ${VARIANTS:-bce focal}; do
    local cfg="$cfg_dir/rexnet200_$variant.yml"
    [ -f "$cfg" ] || { echo "error: config not found: $cfg" >&2; return 2; }
    for fold in ${FOLDS:-0 1 2}; do
      local name="$label rexnet200_$variant fold $fold"
      if [ "$jobs" -le 1 ]; then
        echo "== $name"
        "${LAUNCH[@]}" "$script" -c "$cfg" "dataset.fold=$fold" "$@" || return
        continue
      fi
      [ "${#pids[@]}" -lt "$jobs" ] || _reap
      local log="output/logs/${label}_rexnet200_${variant}_fold${fold}.log"
      mkdir -p output/logs
      echo "== $name (log: $log)"
      OMP_NUM_THREADS="${OMP_NUM_THREADS:-$threads}" "${LAUNCH[@]}" "$script" -c "$cfg" \
        "dataset.fold=$fold" "$@" >"$log" 2>&1 &
      pids+=($!); names+=("$name"); logs+=("$log")
    done
  done
  while [ "${#pids[@]}" -gt 0 ]; do _reap; done
  return $rc
}
