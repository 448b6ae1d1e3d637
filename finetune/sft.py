"""SFT with PASTA attention: TRL's SFTTrainer fed by `PastaCollator`, LoRA or full, one variant at a time.

A variant is what the model learns from: `pasta` trains on the annotated answers (tags and all),
`baseline` (Baseline-SFT, the control) on the same answers stripped of their tags, through the
same collator and the same recipe. The final model (merged if LoRA) lands in
`<run_dir>/models/<variant>-sft`, loadable with `interpreter.load_model`; checkpoints, the
final adapter and TensorBoard logs land in `<run_dir>/checkpoints/<variant>-sft`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from transformers import TrainingArguments
from trl import ModelConfig, SFTConfig, SFTTrainer

from interpreter import add_tag_tokens, has_tag_tokens, load_model, load_tokenizer
from interpreter.models import native_bf16
from pipeline.dataset import load_splits, split

from .collator import PastaCollator
from .data import VARIANTS, drop_long, prepare, pushed_as, tag_tokens_setting, truncation
from .hub import base_license, push_model

DEFAULT_OUTPUT_DIR = "trainer_output"  # what TrainingArguments makes of an unset output_dir


@dataclass
class FinetuneArguments:
    run_dir: str = field(default="runs/demo", metadata={
        "help": "run folder: reads <run_dir>/dataset; writes <run_dir>/models/<variant>-sft (final, merged) and "
                "<run_dir>/checkpoints/<variant>-sft (checkpoints, adapter, logs; --output_dir moves these)"})
    dataset: str | None = field(default=None, metadata={
        "help": "instead of <run_dir>/dataset: a saved DatasetDict folder, a folder of <split>.jsonl, or a .jsonl"})
    variant: Literal["pasta", "baseline", "both"] = field(default="pasta", metadata={
        "help": "pasta: train on the annotated answers; baseline: Baseline-SFT on the stripped answers; both"})
    add_tag_tokens: bool | None = field(default=None, metadata={
        "help": "pasta variant: add the tag pieces as tokens (4 tokens and the topic per promise instead of 18) and "
                "train their embeddings. Unset: as the dataset measured its costs (data_gen's tag_tokens); a value "
                "that disagrees with the dataset is refused"})
    tag_token_learning_rate: float | None = field(default=None, metadata={
        "help": "with train_layers (full finetuning): the learning rate of the new tag tokens' rows, which start far "
                "from where they must end (default: the learning rate)"})
    train_layers: int | None = field(default=None, metadata={
        "help": "train only the last N decoder layers (LoRA: adapters there only; full: the rest frozen), so the "
                "backward pass stops below them; added tag tokens then learn their own rows through the LM head"})
    long_examples: Literal["truncate", "drop"] = field(default="truncate", metadata={
        "help": "an example longer than max_length: truncate trains its first max_length tokens (its end and end "
                "token never); drop leaves it out, judged by its length with tags so that the control leaves out "
                "the same answers"})
    max_train_examples: int | None = field(default=None, metadata={"help": "train on the first N examples only"})
    overwrite: bool = field(default=False, metadata={
        "help": "retrain a variant whose final model already exists (by default it is kept and skipped)"})
    dataset_train_split: str = field(default="train", metadata={"help": "split to train on"})
    dataset_test_split: str = field(default="test", metadata={"help": "split to evaluate on (with eval_strategy)"})
    hub_license: str | None = field(default=None, metadata={
        "help": "with --push_to_hub: the license on the model card, the base model's (default: known for the "
                "embedded SmolLM2, apache-2.0, or read from a local base model's README.md; e.g. gemma for Gemma)"})


class PastaSFTTrainer(SFTTrainer):
    """SFTTrainer, except for its token count: TRL sums the attention mask, which is 4D and additive
    here, so the count comes from the collator's `real_tokens` instead; and, with `tag_rows_lr`, the
    LM head (whose only trained rows are the new tag tokens', `freeze_below`) in an optimizer group of
    its own learning rate, without weight decay (which would move the frozen rows)."""

    def __init__(self, *args, tag_rows_lr: float | None = None, **kwargs):
        self.tag_rows_lr = tag_rows_lr
        super().__init__(*args, **kwargs)

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        head = self.model.get_output_embeddings().weight
        if self.tag_rows_lr is not None and head.requires_grad:
            for group in optimizer.param_groups:
                group["params"] = [p for p in group["params"] if p is not head]
            optimizer.add_param_group({"params": [head], "lr": self.tag_rows_lr, "weight_decay": 0.0})
        return optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        real = inputs.pop("real_tokens")
        counted = self._total_train_tokens
        out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if self.model.training:
            self._total_train_tokens = counted + int(self.accelerator.gather_for_metrics(real).sum())
            self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
        return out


def check_args(args: FinetuneArguments, sft: SFTConfig, model_args: ModelConfig) -> None:
    """Options that would silently train something else than the interpreter runs are refused up front."""
    if not model_args.model_name_or_path:
        raise ValueError("no model: set model_name_or_path in the recipe or pass --model_name_or_path")
    if sft.packing or sft.padding_free:
        raise ValueError("packing / padding_free would drop the 4D PASTA masks; leave them off (the collator pads)")
    if sft.label_smoothing_factor:
        raise ValueError("label_smoothing_factor shifts the labels again; PASTA targets are already shifted")
    if sft.include_num_input_tokens_seen == "non_padding":
        raise ValueError("include_num_input_tokens_seen='non_padding' sums the 4D mask; use 'all' (the logs' "
                         "num_tokens counts real tokens)")
    if model_args.attn_implementation not in (None, "sdpa", "eager"):
        raise ValueError(f"attn_implementation {model_args.attn_implementation!r} cannot take a 4D attention mask; "
                         "use sdpa or eager")
    resume = sft.resume_from_checkpoint
    if args.variant == "both" and resume and resume.lower() not in ("true", "last"):
        raise ValueError("--variant both resumes each variant from its own folder: use --resume_from_checkpoint true")
    if model_args.load_in_4bit or model_args.load_in_8bit:
        raise ValueError("quantized (QLoRA) training is not supported here; train LoRA on a bf16 model")
    if sft.push_to_hub and not sft.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id (e.g. you/smollm2-pasta)")
    if sft.push_to_hub and not (args.hub_license or base_license(model_args.model_name_or_path)):
        raise ValueError(f"--push_to_hub: no license known for {model_args.model_name_or_path}; pass --hub_license "
                         "(the base model's, e.g. apache-2.0 or gemma)")


def cpu_precision(training: TrainingArguments) -> TrainingArguments:
    """`training` (SFT's or preference optimization's), with bf16 passes turned to float32 (and one line saying so)
    on a CPU that has no bf16 units, where torch emulates bf16 several times slower than float32
    (interpreter.models.native_bf16)."""
    if training.bf16 and (training.use_cpu or not torch.cuda.is_available()) and not native_bf16():
        print("finetune: this CPU has no bf16 units (AVX512-BF16 or AMX), where bf16 passes run several times slower "
              "than float32: training in float32 (--bf16 false says so up front)", file=sys.stderr)
        return dataclasses.replace(training, bf16=False)
    return training


def decoder_layers(model):
    """The stack of decoder layers (Llama, Gemma, Qwen2, Mistral: model.model.layers)."""
    layers = getattr(model.get_decoder(), "layers", None)
    if layers is None:
        raise ValueError(f"train_layers: cannot find the decoder layers of {type(model).__name__}")
    return layers


def freeze_below(model, n: int, first_new_id: int | None) -> None:
    """Full finetuning of the last n layers (and the final norm). New tag tokens learn only their own rows, and
    only through the LM head: the embedding output is detached, so the backward pass still stops at the trained
    layers. A tied LM head is untied first: the input side keeps reading a new token as the text it stands for
    (its starting row), while the output side learns where to write it."""
    model.requires_grad_(False)
    for layer in decoder_layers(model)[-n:]:
        layer.requires_grad_(True)
    model.get_decoder().norm.requires_grad_(True)
    if first_new_id is None:
        return
    head = model.get_output_embeddings()
    if head.weight is model.get_input_embeddings().weight:
        untie_lm_head(model)
    head.weight.requires_grad_(True)
    head.weight.register_hook(lambda grad: torch.cat([torch.zeros_like(grad[:first_new_id]), grad[first_new_id:]]))
    model.get_input_embeddings().register_forward_hook(lambda module, args, out: out.detach())


def untie_lm_head(model) -> None:
    """Gives the LM head a weight of its own (a copy of the embeddings), saved and loaded as such."""
    head = model.get_output_embeddings()
    head.weight = torch.nn.Parameter(head.weight.detach().clone())
    model.config.tie_word_embeddings = False
    model.config.get_text_config().tie_word_embeddings = False


def lora_config(model_args: ModelConfig, model, new_tokens: bool, train_layers: int | None = None):
    """TRL's LoRA options; with new tag tokens the embeddings (and a tied LM head with them) train fully."""
    if not model_args.use_peft:
        return None
    from peft import LoraConfig

    modules_to_save = list(model_args.lora_modules_to_save or [])
    tied = False
    if new_tokens:
        inp, out = model.get_input_embeddings(), model.get_output_embeddings()
        modules_to_save += [name.rsplit(".", 1)[-1] for name, mod in model.named_modules() if mod is inp or mod is out]
        tied = out is not None and out.weight is inp.weight
    targets, layers = model_args.lora_target_modules, None
    if train_layers:
        stack = decoder_layers(model)
        layers = list(range(max(len(stack) - train_layers, 0), len(stack)))
        if targets in ("all-linear", ["all-linear"]):  # PEFT takes layers_to_transform with module names only
            targets = sorted({n.rsplit(".", 1)[-1] for n, m in stack[0].named_modules() if isinstance(m, nn.Linear)})
    return LoraConfig(task_type=model_args.lora_task_type, r=model_args.lora_r, lora_alpha=model_args.lora_alpha,
                      lora_dropout=model_args.lora_dropout, target_modules=targets,
                      bias="none", use_rslora=model_args.use_rslora, use_dora=model_args.use_dora,
                      modules_to_save=sorted(set(modules_to_save)) or None, ensure_weight_tying=tied,
                      layers_to_transform=layers)


def load_student(model_args: ModelConfig, tag_tokens: bool):
    """The base model and tokenizer, with the tag pieces added as tokens when asked; returns how many were added."""
    dtype = None if model_args.dtype in (None, "auto") else model_args.dtype
    model, tokenizer = load_model(model_args.model_name_or_path, dtype=dtype, device="cpu")
    if model_args.attn_implementation:
        model.set_attn_implementation(model_args.attn_implementation)
    if model.config._attn_implementation not in ("sdpa", "eager"):
        raise ValueError(f"{model_args.model_name_or_path} uses {model.config._attn_implementation} attention, which "
                         "cannot take a 4D mask; pass --attn_implementation sdpa (or eager)")
    added = add_tag_tokens(tokenizer, model) if tag_tokens else 0
    return model, tokenizer, added


def merge_lora(base: str, adapter: str | Path, out: str | Path, dtype: str | None = None) -> None:
    """Loads the base model, gives it the adapter's tag tokens as training did, merges the adapter, saves."""
    from peft import PeftModel

    model, base_tokenizer = load_model(base, dtype=dtype, device="cpu")
    tokenizer = load_tokenizer(str(adapter))
    if has_tag_tokens(tokenizer) and not has_tag_tokens(base_tokenizer):
        add_tag_tokens(base_tokenizer, model)  # the same shapes the adapter's embeddings were trained with
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    merged.save_pretrained(out)
    tokenizer.save_pretrained(out)


def mask_dtype(model, sft: SFTConfig) -> torch.dtype:
    """The dtype attention computes in, which the additive mask must match."""
    return torch.bfloat16 if sft.bf16 else torch.float16 if sft.fp16 else model.dtype


def train(variant: str, args: FinetuneArguments, sft: SFTConfig, model_args: ModelConfig) -> dict:
    """Trains one variant from the dataset into the run folder; returns its summary (also saved as training.json)."""
    text_field, name = VARIANTS[variant]
    run = Path(args.run_dir)
    out = run / "models" / name
    if (out / "training.json").exists() and not args.overwrite:  # a finished model: a rerun of the demo keeps it
        print(f"finetune {name}: {out} is already trained (--overwrite retrains it)", file=sys.stderr, flush=True)
        return json.loads((out / "training.json").read_text())
    root = run / "checkpoints" if sft.output_dir == DEFAULT_OUTPUT_DIR else Path(sft.output_dir)
    # the Trainer would push the checkpoint folder as it trains; `push` uploads the final (merged) model instead
    sft = dataclasses.replace(sft, output_dir=str(root / name), remove_unused_columns=False, push_to_hub=False,
                              dataset_kwargs={"skip_prepare_dataset": True})
    started = time.perf_counter()
    resume = resume_point(sft)

    where = args.dataset or str(run / "dataset")
    # the control never writes a tag; the PASTA model trains in the tokenization its dataset was measured in
    tag_tokens = variant == "pasta" and tag_tokens_setting(where, args.add_tag_tokens)
    model, tokenizer, added = load_student(model_args, tag_tokens=tag_tokens)
    collator = PastaCollator(tokenizer, text_field, sft.max_length, mask_dtype(model, sft), sft.pad_to_multiple_of)
    data = load_splits(where)
    train_rows = split(data, args.dataset_train_split, where)
    if args.max_train_examples:
        train_rows = train_rows.select(range(min(args.max_train_examples, len(train_rows))))
    train_rows = prepare(train_rows, collator, f"{where} [{args.dataset_train_split}]")
    dropped = None
    if args.long_examples == "drop" and sft.max_length:
        train_rows, dropped = drop_long(train_rows, sft.max_length, where)
    eval_rows = None
    if sft.eval_strategy != "no":
        eval_rows = prepare(split(data, args.dataset_test_split, where), collator,
                            f"{where} [{args.dataset_test_split}]")

    if args.train_layers and not model_args.use_peft:
        freeze_below(model, args.train_layers, len(tokenizer) - added if added else None)
    tag_rows_lr = args.tag_token_learning_rate if added and args.train_layers and not model_args.use_peft else None
    trainer = PastaSFTTrainer(model=model, args=sft, data_collator=collator, train_dataset=train_rows,
                              eval_dataset=eval_rows, processing_class=tokenizer, tag_rows_lr=tag_rows_lr,
                              peft_config=lora_config(model_args, model, added > 0, args.train_layers))
    if trainer.is_world_process_zero():
        trainable = sum(getattr(p, "ds_numel", p.numel()) for p in trainer.model.parameters() if p.requires_grad)
        tokens = sum(train_rows["length"])
        print(f"finetune {name}: {len(train_rows)} examples ({tokens} tokens, {text_field!r}) from {where}; "
              f"{model_args.model_name_or_path}, {'LoRA' if model_args.use_peft else 'full'}, {trainable:,} trainable "
              f"parameters, {added} tag tokens added", file=sys.stderr, flush=True)
        if dropped:
            print(f"finetune {name}: {dropped}", file=sys.stderr, flush=True)
        if cut := truncation(train_rows["length"], sft.max_length):
            print(f"finetune {name}: warning: {cut}", file=sys.stderr, flush=True)
    result = trainer.train(resume_from_checkpoint=resume)

    if model_args.use_peft:
        trainer.save_model(sft.output_dir)  # the final adapter, next to the checkpoints
        if trainer.is_world_process_zero():
            merge_lora(model_args.model_name_or_path, sft.output_dir, out, str(model.dtype).removeprefix("torch."))
    else:
        trainer.save_model(str(out))
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    summary = {"variant": variant, "model": str(out), "base_model": model_args.model_name_or_path,
               "lora": model_args.use_peft, "tag_tokens_added": added, "examples": len(train_rows),
               "steps": trainer.state.global_step, "epochs": sft.num_train_epochs,
               "train_loss": round(result.training_loss, 4), "final_loss": losses[-1] if losses else None,
               "wall_time_s": round(time.perf_counter() - started, 1),
               "train_runtime_s": result.metrics.get("train_runtime")}
    if trainer.is_world_process_zero():
        (out / "training.json").write_text(json.dumps(summary, indent=1) + "\n")
        print(f"finetune {name}: saved to {out}; final loss {summary['final_loss']}, "
              f"{summary['wall_time_s']} s", file=sys.stderr, flush=True)
    trainer.accelerator.wait_for_everyone()
    return summary


def resume_point(sft: SFTConfig) -> str | None:
    """--resume_from_checkpoint PATH, or true/last: the newest checkpoint in this variant's checkpoint folder, if
    there is one (a preempted job reruns as it was, whichever variant it had reached)."""
    value = sft.resume_from_checkpoint
    if value is None or value.lower() not in ("true", "last"):
        if value is not None and not Path(value).is_dir():
            raise ValueError(f"resume_from_checkpoint: {value} is not a checkpoint folder")
        return value
    from transformers.trainer_utils import get_last_checkpoint

    last = get_last_checkpoint(sft.output_dir) if Path(sft.output_dir).is_dir() else None
    if last is None:
        print(f"finetune: no checkpoint-* folder in {sft.output_dir} yet; starting from the beginning",
              file=sys.stderr, flush=True)
    return last


CONTROL = ("Baseline-SFT, the control of a PASTA model: the same recipe on the same answers with their Pasta-Lang tags "
           "stripped (`interpreter.strip`), so it answers sequentially. Compare it with the PASTA model trained "
           "beside it.")


def recipe(summary: dict, args: FinetuneArguments, sft: SFTConfig, model_args: ModelConfig) -> dict:
    """The training arguments that make the model what it is, for its model card."""
    lora = {"lora_r": model_args.lora_r, "lora_alpha": model_args.lora_alpha,
            "lora_target_modules": model_args.lora_target_modules} if model_args.use_peft else {}
    steps = {"max_steps": sft.max_steps} if sft.max_steps > 0 else {"num_train_epochs": sft.num_train_epochs}
    picked = {"method": "LoRA, merged" if model_args.use_peft else "full finetuning", **lora,
              "train_layers": args.train_layers, **steps, "learning_rate": sft.learning_rate,
              "tag_token_learning_rate": args.tag_token_learning_rate, "lr_scheduler_type": sft.lr_scheduler_type,
              "warmup_steps": sft.warmup_steps, "weight_decay": sft.weight_decay,
              "per_device_train_batch_size": sft.per_device_train_batch_size,
              "gradient_accumulation_steps": sft.gradient_accumulation_steps, "max_length": sft.max_length,
              "long_examples": args.long_examples if sft.max_length else None,
              "bf16": sft.bf16, "seed": sft.seed, "examples": summary.get("examples"),
              "optimizer steps": summary.get("steps"), "final loss": summary.get("final_loss")}
    return {k: getattr(v, "value", v) for k, v in picked.items() if v is not None}  # enums as their names


def push(variant: str, summary: dict, args: FinetuneArguments, sft: SFTConfig, model_args: ModelConfig) -> None:
    """Uploads the variant's final model folder (summary["model"]) with its model card, from the main process only:
    --variant both sends the control to <hub_model_id>-baseline, a single variant to --hub_model_id."""
    if int(os.environ.get("RANK", "0")) != 0:  # the launcher's rank: a variant trained before has no trainer to ask
        return
    repo = sft.hub_model_id + ("-baseline" if args.variant == "both" and variant == "baseline" else "")
    base = model_args.model_name_or_path
    card = {"base_model": base, "license": args.hub_license or base_license(base),
            "datasets": pushed_as(args.dataset or Path(args.run_dir) / "dataset"),
            "recipe": recipe(summary, args, sft, model_args),
            "title": f"{'PASTA-SFT' if variant == 'pasta' else 'Baseline-SFT'}: {repo.rsplit('/', 1)[-1]}",
            **({"summary": CONTROL} if variant == "baseline" else {})}
    print(f"finetune {variant}: pushing {summary['model']} to the hub as {repo}", file=sys.stderr, flush=True)
    url = push_model(summary["model"], repo, card, private=sft.hub_private_repo, token=sft.hub_token)
    print(f"finetune {variant}: pushed, {url}", file=sys.stderr, flush=True)
