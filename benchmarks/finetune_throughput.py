"""Training throughput with PASTA masks against plain causal SFT: same model, same token sequences, same batches.

PASTA: `PastaSFTTrainer` + `PastaCollator` (4D additive masks, thread position ids, per-thread targets).
Plain: TRL's stock `SFTTrainer` path on the very same token ids (causal attention from a 2D padding mask,
labels shifted by the loss). Tokens/s counts real (non-padding) tokens over the steps after the first,
the time between step ends, so collation is included. Runs alternate and repeat; the CPU is shared.

  .venv/bin/python benchmarks/finetune_throughput.py --dataset runs/demo/dataset \
      --out benchmarks/finetune_throughput.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainerCallback
from trl import SFTConfig, SFTTrainer

from finetune.collator import PastaCollator
from finetune.data import load_splits, prepare
from finetune.sft import PastaSFTTrainer
from interpreter import add_tag_tokens, load_model


class StepClock(TrainerCallback):
    """Wall time and real tokens between consecutive step ends."""

    def __init__(self):
        self.trainer, self.marks = None, []

    def on_step_end(self, args, state, control, **kwargs):
        self.marks.append((time.perf_counter(), self.trainer._total_train_tokens))


def run(kind: str, args, rows) -> dict:
    model, tok = load_model(args.model, device="cpu")
    if args.tag_tokens:
        add_tag_tokens(tok, model)
    collator = PastaCollator(tok, "annotated", args.max_length)
    data = prepare(rows, collator, args.dataset)
    with tempfile.TemporaryDirectory() as out:
        config = SFTConfig(output_dir=out, max_steps=args.steps, per_device_train_batch_size=args.batch_size,
                           learning_rate=1e-5, bf16=False, gradient_checkpointing=False, report_to="none",
                           save_strategy="no", logging_steps=args.steps, disable_tqdm=True, seed=0,
                           train_sampling_strategy="sequential", remove_unused_columns=False,
                           dataset_kwargs={"skip_prepare_dataset": True}, max_length=args.max_length)
        if kind == "pasta":
            trainer = PastaSFTTrainer(model=model, args=config, data_collator=collator, train_dataset=data,
                                      processing_class=tok)
        else:
            plain = []
            for row in data:
                lay = collator.layout(row)
                ids = lay.input_ids[:args.max_length]
                plain.append({"input_ids": ids, "labels": [-100] * lay.prompt_len + ids[lay.prompt_len:]})
            from datasets import Dataset

            trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(plain), processing_class=tok)
        clock = StepClock()
        clock.trainer = trainer
        trainer.add_callback(clock)
        trainer.train()
    (t0, n0), (t1, n1) = clock.marks[0], clock.marks[-1]
    return {"tokens": n1 - n0, "seconds": round(t1 - t0, 3), "tokens_per_s": round((n1 - n0) / (t1 - t0), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--dataset", default="runs/demo/dataset")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5, help="steps per run; the first is warm-up")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max_length", type=int, default=512)
    parser.add_argument("--tag_tokens", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--out", default=None, help="write the result here as JSON")
    args = parser.parse_args()
    rows = load_splits(args.dataset)["train"].select(range(args.steps * args.batch_size))
    runs = {"pasta": [], "plain": []}
    for i in range(args.repeats):
        for kind in ("plain", "pasta") if i % 2 else ("pasta", "plain"):
            runs[kind].append(run(kind, args, rows))
            print(kind, runs[kind][-1], file=sys.stderr, flush=True)
    median = {k: statistics.median(r["tokens_per_s"] for r in v) for k, v in runs.items()}
    result = {
        "what": "training tokens/s, PASTA masks vs plain causal SFT on the same token sequences",
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, CPU only, "
                   "shared with other jobs",
        "torch": torch.__version__, "model": args.model, "dataset": args.dataset, "batch_size": args.batch_size,
        "timed_steps": args.steps - 1, "max_length": args.max_length, "tag_tokens": args.tag_tokens, "runs": runs,
        "median_tokens_per_s": median,
        "spread_tokens_per_s": {k: [min(r["tokens_per_s"] for r in v), max(r["tokens_per_s"] for r in v)]
                                for k, v in runs.items()},
        "overhead_pct": round(100 * (median["plain"] / median["pasta"] - 1), 1),
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
