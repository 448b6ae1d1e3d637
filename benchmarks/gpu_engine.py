"""The engine on a GPU with a 7B-class model: random weights in Gemma-7B's shape, bf16, built from a
config in code (no download, nothing to carry), replaying the committed stored sequences.

Prints, as JSON lines and a markdown table: at batch 1, each sequence's sequential and PASTA wall time,
the wall-clock speedup, the theoretical speedup and the efficiency (wall / theoretical); under
concurrent load, tokens/s of N replays decoded together (continuous batching) against N one after
another. The tokenizer is a byte-level BPE trained in code on the sequences themselves (the model's
vocabulary is Gemma's 256k; token ids only need to be valid), so a machine with torch, transformers
and tokenizers runs it offline:

    python benchmarks/gpu_engine.py                       # Gemma-7B shape on cuda
    python benchmarks/gpu_engine.py --shape tiny --device cpu --limit 2   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from interpreter import Engine, Options, Script, measure, parse  # noqa: E402
from interpreter.bench import geomean, load_sequences, machine  # noqa: E402

SHAPES = {  # Gemma-7B (google/gemma-7b config.json), and a tiny one for smoke runs
    "gemma-7b": dict(hidden_size=3072, intermediate_size=24576, num_hidden_layers=28, num_attention_heads=16,
                     num_key_value_heads=16, head_dim=256, vocab_size=256000),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, vocab_size=4096),
}
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tokenizer_from(rows: list[dict]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=4000, special_tokens=["<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([r["stored"] for r in rows] * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|im_end|>")
    fast.chat_template = CHATML
    return fast


def model_of(shape: str, device: str):
    from transformers import AutoModelForCausalLM, GemmaConfig

    config = GemmaConfig(**SHAPES[shape], max_position_embeddings=8192, attn_implementation="sdpa")
    torch.manual_seed(0)
    with torch.device(device):
        return AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def script(engine: Engine, row: dict, mode: str) -> Script:
    end = min(engine.end_ids)
    if mode == "sequential":
        from interpreter import encode

        return Script(encode(engine.tokenizer, parse(row["stored"]).stripped), [], end)
    return Script.from_stored(row["stored"], engine.tokenizer, end)


def timed_replays(engine: Engine, rows: list[dict], mode: str, device: str) -> tuple[float, int]:
    """All rows decoded together (one request each); returns (seconds, tokens drawn)."""
    opts = Options(max_new_tokens=10**9, max_thread_tokens=10**9, max_threads=10**9, max_promises=10**9,
                   max_promise_tokens=10**9)
    sync(device)
    start = time.perf_counter()
    requests = [engine.add(r["prompt"], mode, opts, source=script(engine, r, mode)) for r in rows]
    while engine.has_work:
        engine.step()
    sync(device)
    return time.perf_counter() - start, sum(sum(q.result().thread_tokens) for q in requests)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=list(SHAPES), default="gemma-7b")
    p.add_argument("--device", default="cuda")
    p.add_argument("--data", default=str(Path(__file__).with_name("engine-bench-sequences.jsonl")))
    p.add_argument("--limit", type=int, default=8)
    p.add_argument("--batches", type=int, nargs="+", default=[4, 8])
    args = p.parse_args(argv)
    rows = load_sequences(args.data, args.limit)
    engine = Engine(model_of(args.shape, args.device), tokenizer_from(rows), max_batch=max(args.batches))
    timed_replays(engine, rows[:1], "pasta", args.device)  # warm-up: kernels, allocator
    timed_replays(engine, rows[:1], "sequential", args.device)
    per = []
    for row in rows:
        seq, n = timed_replays(engine, [row], "sequential", args.device)
        par, _ = timed_replays(engine, [row], "pasta", args.device)
        theo = measure(row["stored"], engine.tokenizer).theoretical_speedup
        per.append({"id": row["id"], "theoretical": round(theo, 3), "wall_speedup": round(seq / par, 3),
                    "efficiency": round(seq / par / theo, 3), "sequential_tokens_per_s": round(n / seq, 1)})
        print(json.dumps(per[-1]), flush=True)
    load = []
    for b in args.batches:
        group = (rows * b)[:b]
        together, n = timed_replays(engine, group, "pasta", args.device)
        apart = sum(timed_replays(engine, [r], "pasta", args.device)[0] for r in group)
        load.append({"requests": b, "tokens_per_s_together": round(n / together, 1),
                     "tokens_per_s_one_at_a_time": round(n / apart, 1), "ratio": round(apart / together, 2)})
        print(json.dumps(load[-1]), flush=True)
    m = machine()
    print(f"\n# Engine on {m.get('gpu') or m['cpu']}: {args.shape} shape, random weights, bf16\n")
    print(f"batch 1, {len(per)} sequences: wall-clock {geomean([r['wall_speedup'] for r in per]):.3f}x, theoretical "
          f"{geomean([r['theoretical'] for r in per]):.3f}x, efficiency {geomean([r['efficiency'] for r in per]):.3f}; "
          f"sequential {geomean([r['sequential_tokens_per_s'] for r in per]):.1f} tokens/s\n")
    print("| requests together | tokens/s together | tokens/s one at a time | ratio |\n| --- | --- | --- | --- |")
    for r in load:
        print(f"| {r['requests']} | {r['tokens_per_s_together']} | {r['tokens_per_s_one_at_a_time']} | {r['ratio']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
