#!/usr/bin/env bash
# Every stage of the pipeline, small, on one GPU (sized for under ten minutes), to check a GPU setup before a real run:
#   scripts/smoke_gpu.sh [RUN_DIR] [--dry-run]        (default runs/smoke; DRY_RUN=1 works too)
# 48 seed instructions answered by the embedded SmolLM2-135M-Instruct (no hub download) and annotated by the
# structural teacher; both SFT variants for 20 steps in bf16; one BoNBoN round at one λ; 8 MT-Bench prompts
# evaluated with the offline proxy judge. Prints each stage's time. MODEL=... swaps in another small model (an
# embedded alias or a local folder). A rerun into the same folder skips what is done (every stage resumes).
set -euo pipefail
source "$(dirname "$0")/common.sh"
RUN=${ARGS[0]:-runs/smoke}
MODEL=${MODEL:-smollm2-135m-instruct}
# one GPU: with more visible, the Trainer would spread one process over all of them (DataParallel)
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
if [ -z "$DRY_RUN" ] && [ "$(gpu_count)" -eq 0 ]; then
  echo "smoke_gpu.sh: no GPU (nvidia-smi lists none); DRY_RUN=1 prints the commands" >&2
  exit 2
fi

# stage NAME COMMAND...: runs the command and says how long it took
stage() {
  local name=$1 start=$SECONDS
  shift
  run "$@"
  if [ -z "$DRY_RUN" ]; then echo "smoke: $name took $((SECONDS - start)) s" >&2; fi
}

began=$SECONDS
stage dataset "$PY" -m data_gen --config configs/demo/dataset.yaml --run_dir "$RUN" --max_examples 48 \
  --answer_model "$MODEL" --student "$MODEL" --answer_dtype bfloat16 --answer_batch_size 48
stage sft "$PY" -m finetune --config configs/demo/smollm2-sft.yaml --run_dir "$RUN" --model_name_or_path "$MODEL" \
  --variant both --max_steps 20 --bf16 true --use_cpu false --report_to none
stage bonbon "$PY" -m finetune.prefopt --config configs/demo/smollm2-prefopt.yaml --run_dir "$RUN" \
  --model_name_or_path "$RUN/models/pasta-sft" --rounds 1 --lambdas 1 --samples 4 --batch 4 --num_prompts 12 \
  --max_new_tokens 256 --proxy_reference "$MODEL" --use_cpu false --bf16 true --report_to none
stage eval "$PY" -m eval --config configs/demo/eval.yaml --run_dir "$RUN" --limit 8 --judge proxy \
  --methods sequential pasta sot pattern \
  --base_model "$MODEL" --proxy_reference "$MODEL" --max_new_tokens 128 --bootstrap 100 --dtype bfloat16
if [ -z "$DRY_RUN" ]; then echo "smoke: every stage done in $((SECONDS - began)) s; results in $RUN/eval" >&2; fi
