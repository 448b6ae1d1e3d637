#!/usr/bin/env bash
# A local teacher or judge behind an OpenAI-compatible API (vLLM, prefix caching on), for data_gen and eval:
#   scripts/serve_vllm.sh MODEL [PORT] [--dry-run]
# then: python -m data_gen --teacher openai --openai_base_url http://127.0.0.1:PORT/v1 --openai_model MODEL
#       python -m eval --judge openai --judge_base_url http://127.0.0.1:PORT/v1 --judge_model MODEL
# Binds 127.0.0.1 unless HOST is set; set VLLM_API_KEY to require a key (always do so beyond loopback).
set -euo pipefail
source "$(dirname "$0")/common.sh"
MODEL=${ARGS[0]:?usage: serve_vllm.sh MODEL [PORT] [--dry-run]}
PORT=${ARGS[1]:-8001}
HOST=${HOST:-127.0.0.1}
TP=${TP:-1}  # tensor-parallel GPUs
KEY=()
if [ -n "${VLLM_API_KEY:-}" ]; then KEY=(--api-key "$VLLM_API_KEY"); fi
if [ "$HOST" != 127.0.0.1 ] && [ ${#KEY[@]} -eq 0 ]; then
  echo "serve_vllm.sh: set VLLM_API_KEY before serving on $HOST" >&2; exit 2
fi
run vllm serve "$MODEL" --host "$HOST" --port "$PORT" --tensor-parallel-size "$TP" \
  --enable-prefix-caching --max-model-len "${MAX_LEN:-8192}" "${KEY[@]}"
