# Shared by the launchers: `--dry-run` (or DRY_RUN=1) prints every command instead of running it.
DRY_RUN=${DRY_RUN:-}
ARGS=()
for arg in "$@"; do
  if [ "$arg" = "--dry-run" ]; then DRY_RUN=1; else ARGS+=("$arg"); fi
done
run() {
  printf '+'; printf ' %q' "$@"; printf '\n'
  if [ -z "$DRY_RUN" ]; then "$@"; fi
}
PY=${PY:-python}

# `--resume_from_checkpoint true` when the recipe's run already has a checkpoint (preempted jobs rerun as they were)
resume_flag() {
  local recipe=$1 run_dir variant
  [ -f "$recipe" ] || return 0
  run_dir=$(sed -n 's/^run_dir: *//p' "$recipe" | head -1)
  variant=$(sed -n 's/^variant: *//p' "$recipe" | head -1)
  for v in ${variant:-pasta}; do
    if compgen -G "${run_dir:-runs/demo}/checkpoints/${v}-sft/checkpoint-*" > /dev/null; then
      echo "--resume_from_checkpoint true"; return
    fi
  done
}

gpu_count() {
  if command -v nvidia-smi > /dev/null; then nvidia-smi -L | wc -l; else echo 0; fi
}
