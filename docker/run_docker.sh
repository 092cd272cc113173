#!/usr/bin/env bash
# Run a command in the pipeline image with all GPUs, the repository mounted at /workspace
# and the host user's uid/gid (so everything written into the repository stays yours).
#
# Usage: docker/run_docker.sh [command ...]          (default: an interactive bash)
#   docker/run_docker.sh python src/make_image.py
#   DATA_DIR=/mnt/rsna docker/run_docker.sh ./run_train_cnn.sh
#
# Environment:
#   IMAGE        image to run (default rsna-pe:latest, the README's build tag)
#   DATA_DIR     host folder mounted at /workspace/data (default: the repository's data/)
#   CACHE_DIR    host folder for downloaded weights, mounted at /cache (default ~/.cache)
#   DOCKER_ARGS  extra `docker run` options, e.g. "--network=host" for multi-node torchrun
#   DOCKER       container CLI (default docker)
# WANDB_API_KEY and CUDA_VISIBLE_DEVICES are passed through when set.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
IMAGE="${IMAGE:-rsna-pe:latest}"
DOCKER="${DOCKER:-docker}"
CACHE_DIR="${CACHE_DIR:-${HOME:-/tmp}/.cache}"

# Keep the caller's place in the repository (configs use paths relative to the working
# directory); from outside the repository start at its root.
workdir=/workspace
case "$PWD/" in
  "$REPO"/*) workdir="/workspace${PWD#"$REPO"}" ;;
esac

# Create the cache here first: a missing host path would be created by the daemon as root.
mkdir -p "$CACHE_DIR"

args=(
  run --rm
  --gpus all
  # DataLoader workers pass batches through shared memory; Docker's default /dev/shm is 64 MB.
  --ipc=host
  --ulimit memlock=-1 --ulimit stack=67108864
  --user "$(id -u):$(id -g)"
  # The host uid may have no passwd entry in the image: give tools a writable HOME and a name.
  -e HOME=/tmp -e USER="$(id -un 2>/dev/null || echo user)"
  -e XDG_CACHE_HOME=/cache
  -e WANDB_API_KEY -e CUDA_VISIBLE_DEVICES
  -v "$REPO:/workspace"
  -v "$CACHE_DIR:/cache"
  -w "$workdir"
)
if [ -n "${DATA_DIR:-}" ]; then
  if [ ! -d "$DATA_DIR" ]; then
    echo "error: DATA_DIR is not a folder: $DATA_DIR" >&2
    exit 2
  fi
  args+=(-v "$(cd "$DATA_DIR" && pwd):/workspace/data")
fi
# A terminal only when there is one, so the script also works from cron, CI or a pipe.
if [ -t 0 ] && [ -t 1 ]; then
  args+=(-it)
fi
if [ -n "${DOCKER_ARGS:-}" ]; then
  read -r -a extra <<< "$DOCKER_ARGS"
  args+=("${extra[@]}")
fi

if [ "$#" -eq 0 ]; then
  set -- bash
fi
exec "$DOCKER" "${args[@]}" "$IMAGE" "$@"
