"""Preference optimization, the paper's second stage: BoNBoN rounds along the quality/speed trade-off.

Each round and each λ: sample N answers per training prompt from the current model and keep the
best and worst by theoretical speedup + λ·quality (`pipeline.preference`), then train on the pairs with

    L = −α·log pθ(y⁺|x)/|y⁺| + (1−α)·(log pθ(y⁺|x)/pθ(y⁻|x) − log pref(y⁺|x)/pref(y⁻|x) − 1/(2β))²

where every log-probability is a sum over the tokens the policy drew, with the PASTA masks and positions
they were drawn with (the SFT term per token; the reference is the model the round starts from, its
log-probabilities computed once, on the training device, when training begins). Round k starts from
round k−1's model of the same λ; each lands in <run_dir>/models/prefopt-l<λ>-r<k>, which `make eval` picks up.

One process, every round and λ (`--stage all`, the demo):
    python -m finetune.prefopt --config configs/demo/smollm2-prefopt.yaml
Many GPUs, one round k at a time (the paper):
    CUDA_VISIBLE_DEVICES=i python -m finetune.prefopt --config C --stage sample --round k --shard i/n  # each i
    python -m finetune.prefopt --config C --stage sample --round k --merge_shards n   # join, judge, write pairs
    accelerate launch --config_file configs/accelerate/zero3.yaml -m finetune.prefopt --config C \\
        --stage train --round k                                                     # every λ of round k
"""

from __future__ import annotations

import dataclasses
import gc
import json
import sys
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments
from trl import ModelConfig

from interpreter.models import DTYPE_HELP
from pipeline.errors import PipelineError
from pipeline.preference import PreferenceArguments, answer, lambda_name, sample_pairs
from pipeline.tracking import offline_unless_logged_in

from .collator import PastaCollator
from .data import pushed_as
from .hub import base_license, push_model
from .sft import cpu_precision, load_student, lora_config, mask_dtype, merge_lora


@dataclass
class PrefOptArguments(PreferenceArguments):
    """The sampling of every round (PreferenceArguments), and the rounds, stages and loss."""

    rounds: int = field(default=1, metadata={"help": "stage all: BoNBoN rounds; round k samples round k-1's model"})
    alpha: float = field(default=0.2, metadata={"help": "weight of the SFT term on the best answer"})
    beta: float = field(default=0.5, metadata={"help": "the squared term pulls the log-ratio margin to 1/(2β)"})
    stage: str = field(default="all", metadata={
        "help": "all: every round, sampling and training in this one process; sample: round --round's pairs (one "
                "--shard i/n worker per GPU, then --merge_shards n); train: round --round's models from its pairs, "
                "under accelerate launch (or one run: --pairs, --output_name, --model_name_or_path)",
        "choices": ["all", "sample", "train"]})
    round: int = field(default=1, metadata={"help": "stage sample/train: the round (k > 1 samples round k-1's models)"})
    pairs: str | None = field(default=None, metadata={"help": "stage train: one run on this pairs-l<λ>.jsonl"})
    output_name: str | None = field(default=None, metadata={"help": "stage train with --pairs: folder under models/"})
    sample_dtype: str | None = field(default=None, metadata={
        "help": f"the policy's dtype while it samples (its training takes --dtype): {DTYPE_HELP}"})
    hub_license: str | None = field(default=None, metadata={
        "help": "with --push_to_hub: the license on the model cards, the base model's (default: known for the "
                "embedded model and for models this project pushed)"})


class PairCollator:
    """Chosen and rejected answers of B pairs as one PASTA batch of 2B rows (chosen first); `pair_index` holds
    the rows' `index`, where the trainer looks up their reference log-probabilities."""

    def __init__(self, collator: PastaCollator):
        self.collator = collator

    def __call__(self, rows: list[dict]) -> dict:
        # a pair sampled with its layouts trains on the tokens the policy drew, not a re-tokenization of its text
        examples = [{"messages": r.get("prompt") or r["messages"], "annotated": answer(r, side),
                     "layout": r.get(f"{side}_layout")} for side in ("chosen", "rejected") for r in rows]
        batch = self.collator(examples)
        batch.pop("labels")
        batch.pop("real_tokens")
        if "index" in rows[0]:
            batch["pair_index"] = torch.tensor([r["index"] for r in rows])
        return batch


def sequence_logps(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of log p(target) per row under the PASTA layout, and the number of targets."""
    logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                   attention_mask=batch["attention_mask"]).logits.float()
    targets = batch["shift_labels"]
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction="none")
    return -nll.sum(-1), (targets != -100).sum(-1)


class BonbonTrainer(Trainer):
    """Trainer with the BoNBoN loss on PairCollator batches. The reference log-probabilities are taken when
    training begins: the model is then on its device and wrapped (DDP, DeepSpeed) and no step has moved it."""

    def __init__(self, *args, alpha: float, beta: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.alpha, self.beta = alpha, beta
        self.ref: torch.Tensor | None = None  # [pairs, 2]: log pref(y⁺|x), log pref(y⁻|x)
        self.add_callback(_Reference(self))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        ref = self.ref[inputs.pop("pair_index").cpu()].to(inputs["input_ids"].device)
        logp, count = sequence_logps(model, inputs)
        b = ref.shape[0]
        chosen, rejected = logp[:b], logp[b:]
        sft = -(chosen / count[:b].clamp(min=1)).mean()
        margin = (chosen - rejected) - (ref[:, 0] - ref[:, 1])
        ipo = ((margin - 1 / (2 * self.beta)) ** 2).mean()
        loss = self.alpha * sft + (1 - self.alpha) * ipo
        if self.model.training:  # every process's mean, as the loss is logged
            parts = self.accelerator.reduce(torch.stack([sft, ipo, margin.mean()]).detach(), "mean")
            self.log_extra = dict(zip(("sft", "ipo", "margin"), parts.tolist()))
        return (loss, {"logps": logp}) if return_outputs else loss

    def log(self, logs: dict, *args, **kwargs) -> None:
        super().log({**logs, **getattr(self, "log_extra", {})} if "loss" in logs else logs, *args, **kwargs)

    @torch.no_grad()
    def reference_logps(self) -> torch.Tensor:
        """log pref(y⁺|x) and log pref(y⁻|x) of every training pair, as an [n, 2] tensor on every process. Each
        process scores every world-size-th batch with the prepared model (on its device; under ZeRO-3 its layers
        gathered), in the batches training uses, then all share the scores."""
        from accelerate.utils import gather_object

        rows, size = self.train_dataset, self.args.per_device_train_batch_size
        batches = [list(range(i, min(i + size, len(rows)))) for i in range(0, len(rows), size)]
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        mine = batches[rank::world]
        # ZeRO-3 gathers each layer from all processes in every forward: all run as many (the extra ones unused)
        mine += [None] * (-(-len(batches) // world) - len(mine))
        model = self.model_wrapped
        was_training = model.training
        model.eval()
        scored = []
        for idx in mine:
            batch = self._prepare_inputs(self.data_collator([rows[i] for i in (idx or batches[0])]))
            batch.pop("pair_index", None)
            logp, _ = sequence_logps(model, batch)
            if idx:
                scored += [(i, c, r) for i, c, r in zip(idx, *logp.view(2, len(idx)).tolist())]
        model.train(was_training)
        table = torch.empty(len(rows), 2)
        for i, c, r in gather_object(scored):
            table[i] = torch.tensor([c, r])
        return table


class _Reference(TrainerCallback):
    """Fills the trainer's reference table when training begins (after the model is prepared, before any step)."""

    def __init__(self, trainer: BonbonTrainer):
        self.trainer = weakref.ref(trainer)  # no cycle: a finished trainer goes, with its model, when dropped

    def on_train_begin(self, args, state, control, **kwargs):
        trainer = self.trainer()
        trainer.ref = trainer.reference_logps()


def read_pairs(pairs_file: Path) -> list[dict]:
    """The pairs of a pairs-l<λ>.jsonl, numbered (`index`) for their reference log-probabilities."""
    if not pairs_file.exists():
        raise PipelineError(f"{pairs_file}: no such pairs file; sample them first (--stage sample)")
    rows = [json.loads(line) for line in pairs_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not rows:
        raise PipelineError(f"{pairs_file}: no pairs (every sampled answer scored alike); sample more or other prompts")
    return [{**r, "index": i} for i, r in enumerate(rows)]


def train_pairs(policy: str, pairs_file: Path, out: Path, args: PrefOptArguments, training: TrainingArguments,
                model_args: ModelConfig) -> dict:
    """One BoNBoN run: from `policy` on `pairs_file` into `out` (merged if LoRA). Runs in every process of an
    `accelerate launch`; the first process alone writes the merged model, the summary and the messages."""
    from datasets import Dataset

    started, pushes = time.perf_counter(), training.push_to_hub
    rows = read_pairs(pairs_file)
    margs = dataclasses.replace(model_args, model_name_or_path=policy)
    model, tokenizer, _ = load_student(margs, tag_tokens=False)  # the policy's tokenizer has its tag tokens already
    collator = PairCollator(PastaCollator(tokenizer, "annotated", None, mask_dtype(model, training)))
    # pushed below as the merged model with its card, not the Trainer's checkpoints
    training = dataclasses.replace(training, output_dir=str(out.parent.parent / "checkpoints" / out.name),
                                   remove_unused_columns=False, push_to_hub=False)
    if model_args.use_peft:
        from peft import get_peft_model

        # a new adapter starts at zero: the reference, taken when training begins, is the policy itself
        model = get_peft_model(model, lora_config(margs, model, new_tokens=False))
    model.train()
    # the tokenizer goes with every save, so that a LoRA adapter's folder holds what merge_lora loads
    trainer = BonbonTrainer(model=model, args=training, train_dataset=Dataset.from_list(rows),
                            processing_class=tokenizer, data_collator=collator, alpha=args.alpha, beta=args.beta)
    result = trainer.train()
    first = trainer.is_world_process_zero()
    if model_args.use_peft:
        trainer.save_model(training.output_dir)  # every process: ZeRO-3 gathers the adapter from all of them
        if first:
            merge_lora(policy, training.output_dir, out, str(model.dtype).removeprefix("torch."))
    else:
        trainer.save_model(str(out))  # every process takes part; the first writes (the tokenizer too)
    summary = {"policy": policy, "pairs": str(pairs_file), "n_pairs": len(rows), "alpha": args.alpha,
               "beta": args.beta, "train_loss": round(result.training_loss, 4),
               "wall_time_s": round(time.perf_counter() - started, 1)}
    if first:
        (out / "prefopt.json").write_text(json.dumps(summary, indent=1) + "\n")
        print(f"prefopt: {out} from {policy} on {len(rows)} pairs; loss {summary['train_loss']}", file=sys.stderr)
        if pushes:
            push(out, summary, args, training, model_args)
    trainer.accelerator.wait_for_everyone()  # the next λ or round reads what the first process wrote
    return summary


def push(out: Path, summary: dict, args: PrefOptArguments, training: TrainingArguments,
         model_args: ModelConfig) -> None:
    """Uploads model `out` (prefopt-l<λ>-r<k>) with its model card as <hub_model_id>-l<λ>-r<k>."""
    repo = f"{training.hub_model_id}-{out.name.removeprefix('prefopt-')}"
    card = {"base_model": summary["policy"], "license": args.hub_license or base_license(summary["policy"]),
            "datasets": pushed_as(args.dataset or Path(args.run_dir) / "dataset"), "title": f"PASTA-BoNBoN: {repo}",
            "recipe": {"method": "BoNBoN (LoRA, merged)" if model_args.use_peft else "BoNBoN, full finetuning",
                       "pairs": summary["n_pairs"], "alpha": args.alpha, "beta": args.beta,
                       "samples per prompt": args.samples, "judge": args.judge, "learning_rate": training.learning_rate,
                       "num_train_epochs": training.num_train_epochs, "final loss": summary["train_loss"]}}
    print(f"prefopt: pushing {out} to the hub as {repo}", file=sys.stderr, flush=True)
    print(f"prefopt: pushed, {push_model(out, repo, card, private=training.hub_private_repo)}", file=sys.stderr)


@dataclass
class Step:
    """One model of a round: trained from `policy` on `pairs` (sampled into `folder`) into `out`."""

    lam: float
    policy: str
    folder: Path
    pairs: Path
    out: Path


def round_steps(args: PrefOptArguments, model_args: ModelConfig, k: int) -> list[Step]:
    """Round k's models, one per λ. Round 1 samples the shared starting model once for every λ (one folder);
    later rounds sample each λ's own model of round k−1."""
    run, models = Path(args.run_dir), Path(args.run_dir) / "models"
    init = model_args.model_name_or_path or str(models / "pasta-sft")
    steps = []
    for lam in [float(x) for x in args.lambdas]:  # a recipe's "inf" arrives as text
        name = lambda_name(lam)
        folder = run / "prefopt" / f"round-{k}" / ("" if k == 1 else f"l{name}")
        steps.append(Step(lam, init if k == 1 else str(models / f"prefopt-l{name}-r{k - 1}"), folder,
                          folder / f"pairs-l{name}.jsonl", models / f"prefopt-l{name}-r{k}"))
    return steps


def done(step: Step) -> bool:
    return (step.out / "config.json").exists()


def sample_round(args: PrefOptArguments, model_args: ModelConfig, k: int, skip_done: bool = False) -> None:
    """Round k's pairs, each folder's for all its λ (with --shard: one worker's samples; with --merge_shards: the
    merge); with `skip_done`, only folders with a model still to train whose pairs are not written yet."""
    folders: dict[Path, list[Step]] = {}
    for step in round_steps(args, model_args, k):
        folders.setdefault(step.folder, []).append(step)
    for folder, steps in folders.items():
        if skip_done and all(done(s) or s.pairs.exists() for s in steps):
            continue
        policy = steps[0].policy
        if k > 1 and not (Path(policy) / "config.json").exists():
            raise PipelineError(f"{policy} is not trained yet: train round {k - 1} first (--stage train --round "
                                f"{k - 1})")
        summary = sample_pairs(args, policy, folder, [s.lam for s in steps], dtype=args.sample_dtype)
        if args.shard:
            print(f"prefopt: round {k}, shard {summary['shard']}: {summary['samples']} samples of {policy} in "
                  f"{summary['file']}", file=sys.stderr)


def _check_ranked_by(folder: Path, speed: str) -> None:
    """Refuses pairs, or models trained on them, ranked by another speed than the one asked for."""
    summary = folder / "summary.json"
    ranked = json.loads(summary.read_text()).get("speed", "theoretical") if summary.exists() else speed
    if ranked != speed:
        raise PipelineError(f"{folder}: its pairs were ranked by --speed {ranked}; pass --speed {ranked} to go on, "
                            "or a new --run_dir for pairs ranked by the other")


def train_round(args: PrefOptArguments, training: TrainingArguments, model_args: ModelConfig, k: int) -> list[dict]:
    """Round k's models from their pairs; a model already trained is kept."""
    trained = []
    for step in round_steps(args, model_args, k):
        _check_ranked_by(step.folder, args.speed)
        if not done(step):
            trained.append(train_pairs(step.policy, step.pairs, step.out, args, training, model_args))
            gc.collect()  # DeepSpeed's hooks tie a model to its engine: free both before the next λ loads
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    return trained


def run_rounds(args: PrefOptArguments, training: TrainingArguments, model_args: ModelConfig) -> list[dict]:
    """Every round and λ in this process; a step whose output exists is skipped, so a killed run resumes."""
    trained = []
    for k in range(1, args.rounds + 1):
        sample_round(args, model_args, k, skip_done=True)
        trained += train_round(args, training, model_args, k)
    return trained


def check_stage(args: PrefOptArguments, training: TrainingArguments) -> None:
    """Refuses a stage that would run the wrong way: one sampling job per process, shards outside sampling, a push
    with nowhere to go."""
    if training.push_to_hub and not training.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id (each model goes to <hub_model_id>-l<λ>-r<k>)")
    if args.stage != "sample" and (args.shard or args.merge_shards):
        raise ValueError("--shard and --merge_shards belong to --stage sample")
    if args.stage != "train" and training.world_size > 1:
        raise ValueError(f"--stage {args.stage} samples in this process and would run once in each of the "
                         f"{training.world_size} processes; sample with one --stage sample --shard i/n worker per GPU "
                         "and --merge_shards n, then accelerate launch only --stage train")


def run(args: PrefOptArguments, training: TrainingArguments, model_args: ModelConfig) -> None:
    training = cpu_precision(training)
    check_stage(args, training)
    offline_unless_logged_in(training.report_to)
    if args.stage == "all":
        run_rounds(args, training, model_args)
    elif args.stage == "sample":
        sample_round(args, model_args, args.round)
    elif not args.pairs:
        train_round(args, training, model_args, args.round)
    elif not (args.output_name and model_args.model_name_or_path):
        raise ValueError("--stage train --pairs needs --output_name and --model_name_or_path (the policy)")
    else:
        train_pairs(model_args.model_name_or_path, Path(args.pairs), Path(args.run_dir) / "models" / args.output_name,
                    args, training, model_args)


def parser():
    from trl import TrlParser

    return TrlParser((PrefOptArguments, TrainingArguments, ModelConfig), prog="python -m finetune.prefopt",
                     description=__doc__)


def main(argv=None) -> int:
    from interpreter import ModelNotFound
    from pipeline.errors import cli

    return cli(parser(), run, argv, errors=(ModelNotFound,))


if __name__ == "__main__":
    sys.exit(main())
