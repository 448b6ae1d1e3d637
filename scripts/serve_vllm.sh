#!/usr/bin/env bash
# A model behind an OpenAI-compatible API (vLLM, prefix caching on): a teacher or judge for data_gen and eval, or
# a PASTA model for the interpreter's remote backend:
#   scripts/serve_vllm.sh MODEL [PORT] [--dry-run]
# then: python -m data_gen --teacher openai --openai_base_url http://127.0.0.1:PORT/v1 --openai_model MODEL
#       python -m eval --judge openai --judge_base_url http://127.0.0.1:PORT/v1 --judge_model MODEL
#       python -m interpreter generate --backend openai --base_url http://127.0.0.1:PORT/v1 --prompt "..."
# The launch lines, by size (bf16 weights take 2 bytes a parameter):
#   scripts/serve_vllm.sh runs/paper/models/pasta-sft 8001          # a 7B PASTA model, ~17 GB: one GPU, TP=1
#   scripts/serve_vllm.sh google/gemma-7b-it 8001                    # 7B: TP=1
#   TP=4 scripts/serve_vllm.sh Qwen/Qwen2.5-72B-Instruct 8000        # 72B, ~145 GB: TP=4 on 80 GB GPUs
#   TP=8 scripts/serve_vllm.sh Qwen/Qwen2.5-72B-Instruct 8000        #      TP=8 on 40 or 48 GB GPUs
# Picking TP (tensor-parallel GPUs): the fewest GPUs of one node whose memory holds the weights with a quarter or
# more to spare for the KV cache (vLLM takes --gpu-memory-utilization 0.9 of each); it must divide the model's
# attention heads (1, 2, 4 or 8 always do for these). More GPUs than that buy throughput, not room.
# vLLM pins its own torch: it lives in its own environment (requirements-vllm.txt); VLLM=.venv-vllm/bin/vllm
# points at it without activating it. Binds 127.0.0.1 unless HOST is set; export VLLM_API_KEY to require a key
# (always do so beyond loopback; clients then read it with --api_key_env VLLM_API_KEY).
set -euo pipefail
source "$(dirname "$0")/common.sh"
MODEL=${ARGS[0]:?usage: serve_vllm.sh MODEL [PORT] [--dry-run]}
PORT=${ARGS[1]:-8001}
HOST=${HOST:-127.0.0.1}
TP=${TP:-1}  # tensor-parallel GPUs
VLLM=${VLLM:-vllm}
GPUS=$(gpu_count)
if [ "$GPUS" -gt 0 ] && [ "$TP" -gt "$GPUS" ]; then
  echo "serve_vllm.sh: TP=$TP needs $TP GPUs; this machine has $GPUS" >&2; exit 2
fi
if [ "$HOST" != 127.0.0.1 ] && [ -z "${VLLM_API_KEY:-}" ]; then
  echo "serve_vllm.sh: set VLLM_API_KEY before serving on $HOST" >&2; exit 2
fi
# vLLM reads the key from VLLM_API_KEY itself: never on the command line, where the printed line and ps show it
if [ -n "${VLLM_API_KEY:-}" ]; then export VLLM_API_KEY; fi
run "$VLLM" serve "$MODEL" --host "$HOST" --port "$PORT" --tensor-parallel-size "$TP" \
  --enable-prefix-caching --max-model-len "${MAX_LEN:-8192}"
