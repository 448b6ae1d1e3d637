#!/usr/bin/env bash
# Finetune on one machine with several GPUs:
#   scripts/train_node.sh RECIPE [zero3|zero2|multi_gpu|single_gpu] [--dry-run] [-- extra finetune flags]
# e.g. scripts/train_node.sh configs/paper/gemma-7b-sft.yaml zero3
# Resumes from the newest checkpoint-N when one exists (the paper recipes save every save_steps): after a crash or a
# preemption, rerun the same command. `-- --resume_from_checkpoint PATH` picks one checkpoint instead.
set -euo pipefail
source "$(dirname "$0")/common.sh"
RECIPE=${ARGS[0]:?usage: train_node.sh RECIPE [LAUNCH] [--dry-run]}
LAUNCH=${ARGS[1]:-zero3}
GPUS=${GPUS:-$(gpu_count)}
[ "$GPUS" -ge 1 ] || GPUS=1
EXTRA=("${ARGS[@]:2}")
run accelerate launch --config_file "configs/accelerate/$LAUNCH.yaml" --num_processes "$GPUS" \
  -m finetune --config "$RECIPE" "${EXTRA[@]}" $(resume_flag "${EXTRA[@]}")
