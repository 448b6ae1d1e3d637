#!/usr/bin/env bash
# Starts a vLLM OpenAI-compatible server for the data_gen openai teacher (see configs/paper/dataset-slimorca.yaml).
# Usage: scripts/vllm_teacher.sh [MODEL] [TENSOR_PARALLEL] [PORT]
set -euo pipefail
MODEL=${1:-Qwen/Qwen2.5-72B-Instruct}
TP=${2:-8}
PORT=${3:-8000}
command -v vllm >/dev/null || { echo "vllm is not installed here: pip install vllm (on a GPU node)" >&2; exit 1; }
echo "teacher: --openai_base_url http://$(hostname):${PORT}/v1 --openai_model ${MODEL}" >&2
exec vllm serve "$MODEL" --tensor-parallel-size "$TP" --port "$PORT" --max-model-len 16384
