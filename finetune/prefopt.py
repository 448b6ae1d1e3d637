"""Preference optimization, the paper's second stage: BoNBoN rounds along the quality/speed trade-off.

Each round and each λ: sample N answers per training prompt from the current model and keep the
best and worst by theoretical speedup + λ·quality (`pipeline.preference`, in this process; the
policy is freed before training loads it again), then train on the pairs with

    L = −α·log pθ(y⁺|x)/|y⁺| + (1−α)·(log pθ(y⁺|x)/pθ(y⁻|x) − log pref(y⁺|x)/pref(y⁻|x) − 1/(2β))²

where every log-probability is taken with the PASTA masks and positions of `interpreter.build_layout`
(the SFT term per token; the reference is the model the round starts from, its log-probabilities
computed once). Round k starts from round k−1's model of the same λ; each lands in
<run_dir>/models/prefopt-l<λ>-r<k>, which `make eval` picks up.

python -m finetune.prefopt --config configs/demo/smollm2-prefopt.yaml
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import Trainer, TrainingArguments
from trl import ModelConfig

from pipeline.preference import PreferenceArguments, lambda_name, sample_pairs

from .collator import PastaCollator
from .sft import load_student, lora_config, mask_dtype, merge_lora


@dataclass
class PrefOptArguments(PreferenceArguments):
    """The sampling of every round (PreferenceArguments), and the rounds and loss."""

    rounds: int = field(default=1, metadata={"help": "BoNBoN rounds; round k samples from round k-1's model"})
    alpha: float = field(default=0.2, metadata={"help": "weight of the SFT term on the best answer"})
    beta: float = field(default=0.5, metadata={"help": "the squared term pulls the log-ratio margin to 1/(2β)"})
    stage: str = field(default="all", metadata={"help": "all (rounds), or train: one run on --pairs from --policy"})
    pairs: str | None = field(default=None, metadata={"help": "stage train: a pairs-l<λ>.jsonl"})
    output_name: str | None = field(default=None, metadata={"help": "stage train: folder name under models/"})


class PairCollator:
    """Chosen and rejected answers of B pairs as one PASTA batch of 2B rows (chosen first)."""

    def __init__(self, collator: PastaCollator):
        self.collator = collator

    def __call__(self, rows: list[dict]) -> dict:
        # a pair sampled with its layouts trains on the tokens the policy drew, not a re-tokenization of its text
        examples = [{"messages": r["messages"], "annotated": r[side], "layout": r.get(f"{side}_layout")}
                    for side in ("chosen", "rejected") for r in rows]
        batch = self.collator(examples)
        batch.pop("labels")
        batch.pop("real_tokens")
        if "ref_chosen" in rows[0]:
            batch["ref_logps"] = torch.tensor([[r["ref_chosen"], r["ref_rejected"]] for r in rows])
        return batch


def sequence_logps(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of log p(target) per row under the PASTA layout, and the number of targets."""
    logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                   attention_mask=batch["attention_mask"]).logits.float()
    targets = batch["shift_labels"]
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction="none")
    return -nll.sum(-1), (targets != -100).sum(-1)


class BonbonTrainer(Trainer):
    def __init__(self, *args, alpha: float, beta: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.alpha, self.beta = alpha, beta

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        ref = inputs.pop("ref_logps").float()
        logp, count = sequence_logps(model, inputs)
        b = ref.shape[0]
        chosen, rejected = logp[:b], logp[b:]
        sft = -(chosen / count[:b].clamp(min=1)).mean()
        margin = (chosen - rejected) - (ref[:, 0] - ref[:, 1])
        ipo = ((margin - 1 / (2 * self.beta)) ** 2).mean()
        loss = self.alpha * sft + (1 - self.alpha) * ipo
        if self.model.training:
            self.log_extra = {"sft": sft.item(), "ipo": ipo.item(), "margin": margin.mean().item()}
        return (loss, {"logps": logp}) if return_outputs else loss

    def log(self, logs: dict, *args, **kwargs) -> None:
        super().log({**logs, **getattr(self, "log_extra", {})} if "loss" in logs else logs, *args, **kwargs)


@torch.no_grad()
def reference_logps(model, collator: PairCollator, rows: list[dict], batch_size: int = 4) -> list[dict]:
    """log pref(y⁺|x) and log pref(y⁻|x) of every pair, once, before training moves the model."""
    model.eval()
    out = []
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        logp, _ = sequence_logps(model, collator(chunk))
        b = len(chunk)
        out += [{**r, "ref_chosen": logp[j].item(), "ref_rejected": logp[b + j].item()} for j, r in enumerate(chunk)]
    return out


def train_pairs(policy: str, pairs_file: Path, out: Path, args: PrefOptArguments, training: TrainingArguments,
                model_args: ModelConfig) -> dict:
    """One BoNBoN run: from `policy` on `pairs_file` into `out` (merged if LoRA)."""
    from datasets import Dataset

    started = time.perf_counter()
    rows = [json.loads(line) for line in pairs_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not rows:
        raise SystemExit(f"{pairs_file}: no pairs (every sampled answer scored alike); sample more or other prompts")
    margs = dataclasses.replace(model_args, model_name_or_path=policy)
    model, tokenizer, _ = load_student(margs, tag_tokens=False)  # the policy's tokenizer has its tag tokens already
    collator = PairCollator(PastaCollator(tokenizer, "annotated", None, mask_dtype(model, training)))
    rows = reference_logps(model, collator, rows, training.per_device_train_batch_size)
    training = dataclasses.replace(training, output_dir=str(out.parent.parent / "checkpoints" / out.name),
                                   remove_unused_columns=False)
    if model_args.use_peft:
        from peft import get_peft_model

        model = get_peft_model(model, lora_config(margs, model, new_tokens=False))
    model.train()
    # the tokenizer goes with every save, so that a LoRA adapter's folder holds what merge_lora loads
    trainer = BonbonTrainer(model=model, args=training, train_dataset=Dataset.from_list(rows),
                            processing_class=tokenizer, data_collator=collator, alpha=args.alpha, beta=args.beta)
    result = trainer.train()
    out.mkdir(parents=True, exist_ok=True)
    if model_args.use_peft:
        trainer.save_model(training.output_dir)
        merge_lora(policy, training.output_dir, out, str(model.dtype).removeprefix("torch."))
    else:
        trainer.save_model(str(out))
        tokenizer.save_pretrained(out)
    summary = {"policy": policy, "pairs": str(pairs_file), "n_pairs": len(rows), "alpha": args.alpha,
               "beta": args.beta, "train_loss": round(result.training_loss, 4),
               "wall_time_s": round(time.perf_counter() - started, 1)}
    (out / "prefopt.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"prefopt: {out} from {policy} on {len(rows)} pairs; loss {summary['train_loss']}", file=sys.stderr)
    return summary


def run_rounds(args: PrefOptArguments, training: TrainingArguments, model_args: ModelConfig) -> list[dict]:
    """Every round and λ; a step whose output exists is skipped, so a killed run resumes where it stopped."""
    models = Path(args.run_dir) / "models"
    init = model_args.model_name_or_path or str(models / "pasta-sft")
    args.lambdas = [float(x) for x in args.lambdas]  # a recipe's "inf" arrives as text
    done = []
    for k in range(1, args.rounds + 1):
        for lam in args.lambdas:
            name = f"prefopt-l{lambda_name(lam)}-r{k}"
            out = models / name
            if (out / "config.json").exists():
                continue
            policy = init if k == 1 else str(models / f"prefopt-l{lambda_name(lam)}-r{k - 1}")
            # round 1 samples the shared starting model once for every λ; later rounds sample each λ's own model
            folder = Path(args.run_dir) / "prefopt" / f"round-{k}" / ("" if k == 1 else f"l{lambda_name(lam)}")
            pairs = folder / f"pairs-l{lambda_name(lam)}.jsonl"
            if not pairs.exists():
                sample_pairs(args, policy, folder, args.lambdas if k == 1 else [lam])
            done.append(train_pairs(policy, pairs, out, args, training, model_args))
    return done


def run(args: PrefOptArguments, training: TrainingArguments, model_args: ModelConfig) -> None:
    if args.stage != "train":
        run_rounds(args, training, model_args)
    elif not (args.pairs and args.output_name and model_args.model_name_or_path):
        raise ValueError("stage train needs --pairs, --output_name and --model_name_or_path (the policy)")
    else:
        train_pairs(model_args.model_name_or_path, Path(args.pairs), Path(args.run_dir) / "models" / args.output_name,
                    args, training, model_args)


def main(argv=None) -> int:
    from trl import TrlParser

    from interpreter import ModelNotFound
    from pipeline.errors import cli

    parser = TrlParser((PrefOptArguments, TrainingArguments, ModelConfig), prog="python -m finetune.prefopt",
                       description=__doc__)
    return cli(parser, run, argv, errors=(ModelNotFound,))


if __name__ == "__main__":
    sys.exit(main())
