#!/usr/bin/env bash
# One evaluation split across N workers on this machine (one GPU each when there are GPUs), then merged:
#   scripts/shard_eval.sh RECIPE N [--dry-run] [-- extra eval flags]
# On a cluster, run `python -m eval --config RECIPE --shard i/N` as N jobs, then the merge line below.
set -euo pipefail
source "$(dirname "$0")/common.sh"
RECIPE=${ARGS[0]:?usage: shard_eval.sh RECIPE N [--dry-run]}
N=${ARGS[1]:-2}
EXTRA=("${ARGS[@]:2}")
GPUS=$(gpu_count)
PIDS=()
for ((i = 0; i < N; i++)); do
  if [ "$GPUS" -gt 0 ]; then export CUDA_VISIBLE_DEVICES=$((i % GPUS)); fi
  if [ -n "$DRY_RUN" ]; then
    run "$PY" -m eval --config "$RECIPE" --shard "$i/$N" "${EXTRA[@]}"
  else
    run "$PY" -m eval --config "$RECIPE" --shard "$i/$N" "${EXTRA[@]}" &
    PIDS+=($!)
  fi
done
for pid in "${PIDS[@]}"; do wait "$pid"; done
run "$PY" -m eval --config "$RECIPE" --merge_shards "$N" "${EXTRA[@]}"
