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
# JOBS=1 (default): one run after another, output to the terminal; the first failed run stops
# the loop with its exit status. JOBS=N: N runs at a time, each writing
# output/logs/<label>_<run>_fold<k>.log; a failed run does not stop the others, its error line
# is printed and the function returns 1 at the end. On a CPU machine each run gets cores/N of
# the cores (RSNA_PE_CORES, read by the stages); on a GPU machine the runs share the GPUs.
run_each() {
  local label=$1 script=$2 cfg_dir=$3; shift 3
  local jobs="${JOBS:-1}" variant fold
  if ! [[ $jobs =~ ^[1-9][0-9]*$ ]]; then
    echo "error: JOBS=$jobs: want a whole number >= 1" >&2; return 2
  fi
  for variant in ${VARIANTS:-bce focal}; do  # every config, before anything starts
    if [ ! -f "$cfg_dir/rexnet200_$variant.yml" ]; then
      echo "error: config not found: $cfg_dir/rexnet200_$variant.yml" >&2; return 2
    fi
  done
  if [ "$jobs" -eq 1 ]; then
    for variant in ${VARIANTS:-bce focal}; do
      for fold in ${FOLDS:-0 1 2}; do
        echo "== $label rexnet200_$variant fold $fold"
        "${LAUNCH[@]}" "$script" -c "$cfg_dir/rexnet200_$variant.yml" "dataset.fold=$fold" "$@" || return
      done
    done
    return 0
  fi
  local cores rc=0 name log
  cores=$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1)
  local -A names=() logs=()
  # Ctrl-C or a kill must not leave runs behind (background jobs of a script ignore SIGINT).
  trap 'kill -TERM "${!names[@]}" 2>/dev/null; wait; exit 130' INT TERM
  mkdir -p output/logs
  for variant in ${VARIANTS:-bce focal}; do
    for fold in ${FOLDS:-0 1 2}; do
      while [ "${#names[@]}" -ge "$jobs" ]; do _reap_one; done
      name="$label rexnet200_$variant fold $fold"
      log="output/logs/${label}_rexnet200_${variant}_fold${fold}.log"
      echo "== $name (log: $log)"
      RSNA_PE_CORES=$(( cores / jobs > 0 ? cores / jobs : 1 )) PYTHONUNBUFFERED=1 \
        "${LAUNCH[@]}" "$script" -c "$cfg_dir/rexnet200_$variant.yml" "dataset.fold=$fold" "$@" \
        >"$log" 2>&1 &
      names[$!]=$name; logs[$!]=$log
    done
  done
  while [ "${#names[@]}" -gt 0 ]; do _reap_one; done
  trap - INT TERM
  return $rc
}

# Waits for whichever run of run_each ends next (uses its names, logs and rc).
_reap_one() {
  local pid status=0 err
  wait -n -p pid "${!names[@]}" || status=$?
  if [ "$status" -eq 0 ]; then
    echo "   done: ${names[$pid]}"
  else
    rc=1  # the stages end with a one-line "error: ..."; else the log's last line
    err=$(grep -a '^error:' "${logs[$pid]}" | tail -n 1) || true
    [ -n "$err" ] || err=$(tail -n 1 "${logs[$pid]}" | tr '\r' '\n' | tail -n 1)
    echo "error: ${names[$pid]} failed (exit $status): $err (log: ${logs[$pid]})" >&2
  fi
  unset "names[$pid]" "logs[$pid]"
}
