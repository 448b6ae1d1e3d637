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

# Like run, but in the background: $! is then the command's own pid (not a subshell's), so signals reach it
start() {
  printf '+'; printf ' %q' "$@"; printf '\n'
  if [ -z "$DRY_RUN" ]; then "$@" & fi
}

# Waits for background job $1 and returns ITS exit status. bash runs a trap only between commands, so a job in
# the foreground would keep SLURM's USR1 waiting until it ended; `wait` on a background job returns at once with
# 128+signal instead and the trap runs. A trap that sets SIGNALLED=1 makes this wait again for the job's own status.
SIGNALLED=
wait_step() {
  local pid=$1 status=0 again
  wait "$pid" || status=$?
  while [ "$status" -gt 128 ] && [ -n "$SIGNALLED" ]; do
    SIGNALLED=
    again=0
    wait "$pid" || again=$?
    if [ "$again" -eq 127 ]; then break; fi  # it had ended as the signal came: $status was its own
    status=$again
  done
  return "$status"
}

# `--resume_from_checkpoint true` unless the extra flags ($@) name a checkpoint: finetune then continues from the
# newest checkpoint-N of each variant in its own checkpoint folder, or starts afresh when there is none yet, so a
# preempted or requeued job reruns as it was. (finetune knows the folder, output_dir overrides and variant both
# included; the scripts do not guess it.)
resume_flag() {
  local arg
  for arg in "$@"; do
    case $arg in --resume_from_checkpoint* | --resume-from-checkpoint*) return 0 ;; esac
  done
  echo "--resume_from_checkpoint true"
}

gpu_count() {
  if command -v nvidia-smi > /dev/null; then nvidia-smi -L | wc -l; else echo 0; fi
}
