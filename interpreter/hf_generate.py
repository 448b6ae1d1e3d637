"""Sequential decoding of many prompts through `model.generate`: the throughput path for seed answers
and baselines. A test proves its greedy tokens equal the engine's sequential mode."""

from __future__ import annotations

import time

import torch
from transformers import LogitsProcessor, RepetitionPenaltyLogitsProcessor, StoppingCriteria

from .detok import Detokenizer
from .options import Options, Result
from .repetition import LOOP_TAIL, loops
from .sampling import Sampler


@torch.inference_mode()
def generate_batch(engine, prompts: list, opts: Options, batch_size: int = 8) -> list[Result]:
    """Left-padded batches of `batch_size` prompts. Results carry no per-request timing (wall_time is
    the batch's share)."""
    tok = engine.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else min(engine.end_ids)
    processors = []
    if opts.repetition_penalty != 1.0:
        processors.append(_Penalty(opts.repetition_penalty, engine.unpenalized | {pad}))
    if opts.temperature > 0:
        processors.append(_Draw(Sampler(opts, engine.device)))
    results = []
    for start in range(0, len(prompts), batch_size):
        ids = [engine.prompt_ids(p) for p in prompts[start:start + batch_size]]
        width = max(map(len, ids))
        input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids], device=engine.device)
        attention = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], device=engine.device)
        began = time.perf_counter()
        loop_stop = _LoopStop(tok, width, engine.end_ids) if opts.stop_loops else None
        out = engine.model.generate(input_ids=input_ids, attention_mask=attention,
                                    max_new_tokens=opts.max_new_tokens, eos_token_id=sorted(engine.end_ids),
                                    pad_token_id=pad, stopping_criteria=[loop_stop] if loop_stop else None,
                                    do_sample=False, logits_processor=processors)
        share = (time.perf_counter() - began) / len(ids)
        for k, (prompt, row) in enumerate(zip(ids, out[:, width:].tolist())):
            looped = loop_stop.stopped.get(k) if loop_stop else None
            drawn = looped or next((i + 1 for i, t in enumerate(row) if t in engine.end_ids), None)
            body = row[:drawn] if looped else row[:drawn - 1] if drawn else row
            text = tok.decode(body, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            for s in opts.stop:
                text = text[:text.find(s)] if s in text else text
            results.append(Result(text=text, stored=text, mode="sequential",
                                  finish_reason="loop" if looped else "stop" if drawn else "length",
                                  prompt_tokens=len(prompt), tokens=drawn or len(row),
                                  thread_tokens=[drawn or len(row)], steps=drawn or len(row), threads=0,
                                  wall_time=share, prefill_time=0.0, looped=int(bool(looped))))
    return results


class _Penalty(LogitsProcessor):
    """Options.repetition_penalty as the engine applies it: HF's, sparing the end tokens (and the padding)."""

    def __init__(self, penalty: float, spared: set[int]):
        self.hf = RepetitionPenaltyLogitsProcessor(penalty)
        self.spared = torch.tensor(sorted(spared))

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        kept = scores[:, self.spared.to(scores.device)].clone()
        scores = self.hf(input_ids, scores)
        scores[:, self.spared.to(scores.device)] = kept
        return scores


class _Draw(LogitsProcessor):
    """Sampling by the engine's `Sampler`, the drawn token left as greedy search's only choice: HF's sampling sorts
    and samples the whole vocabulary of every row, half the time of a batched step on a CPU."""

    def __init__(self, sampler: Sampler):
        self.sampler = sampler

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        drawn = self.sampler.sample(scores).unsqueeze(-1)
        return scores.fill_(float("-inf")).scatter_(-1, drawn, 0.0)  # in place: no new row of the vocabulary a step


class _LoopStop(StoppingCriteria):
    """Options.stop_loops for `model.generate`: a row ends at the token where its text starts to loop, as
    the engine's main thread does (the same streaming detokenizer, one new token a call). `stopped` maps
    row → tokens drawn by then."""

    def __init__(self, tokenizer, prompt_width: int, end_ids: set[int]):
        self.tok, self.width, self.end_ids = tokenizer, prompt_width, end_ids
        self.detoks: dict[int, Detokenizer] = {}
        self.tails: dict[int, str] = {}
        self.stopped: dict[int, int] = {}
        self.ended: set[int] = set()

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for k, token in enumerate(input_ids[:, -1].tolist()):
            if k in self.ended or k in self.stopped:
                continue
            if token in self.end_ids:
                self.ended.add(k)
                continue
            detok = self.detoks.setdefault(k, Detokenizer(self.tok))
            self.tails[k] = (self.tails.get(k, "") + detok.push(token))[-LOOP_TAIL:]
            if loops(self.tails[k]):
                self.stopped[k], done[k] = input_ids.shape[1] - self.width, True
        return done
