"""Decoding methods under evaluation, all on the same engine, batch size 1, greedy by default.

Each method's `answer(prompt)` takes an instruction or a conversation (chat messages ending with the
user's, as MT-Bench's second turn) and returns a generation record: the answer, how long it took, how
many tokens and steps, and (where the method has one) its stored form.
"""

from __future__ import annotations

import re
import time

from interpreter import Engine, Options, encode, measure, prompt_ids

SKELETON_PROMPT = (
    "Plan an answer to the question below as a short skeleton: a numbered list (1., 2., 3., ...) of 3 to 8 "
    "points, each only a few words. Write only the skeleton, not the answer.\n\nQuestion: {question}"
)
EXPAND_PROMPT = (
    "Question: {question}\n\nAn answer is being written from this skeleton:\n{skeleton}\n\n"
    "Write point {index} only, in one or two sentences. Do not write the other points."
)
_POINT = re.compile(r"^\s*(\d+)[.)]\s*(.+?)\s*$", re.M)
_BOLD = re.compile(r"\*\*(.+?)\*\*")


def skeleton_points(text: str, max_points: int) -> list[tuple[int, str]]:
    """Numbered points of a skeleton; a small model's wordy points are cut to their bold head or first words."""
    points = []
    for n, body in _POINT.findall(text)[:max_points]:
        bold = _BOLD.search(body)
        points.append((int(n), bold.group(1).strip(" :") if bold else " ".join(body.split()[:8])))
    return points


def record(result, method: str, model: str, theoretical: float | None, parallelism: float | None, **extra) -> dict:
    return {"method": method, "model": model, "text": result.text, "stored": result.stored,
            "tokens": sum(result.thread_tokens), "steps": result.steps, "threads": result.threads,
            "wall_time": result.wall_time, "theoretical_speedup": theoretical, "parallelism": parallelism,
            "finish_reason": result.finish_reason, "repairs": list(result.repairs), "steered": result.steered,
            "looped": result.looped, **extra}


class Sequential:
    """Plain decoding (the baseline, and the base model)."""

    name = "sequential"

    def __init__(self, engine: Engine, model: str, options: Options):
        self.engine, self.model, self.options = engine, model, options

    def answer(self, prompt: str | list[dict]) -> dict:
        r = self.engine.generate(prompt, mode="sequential", options=self.options)
        return record(r, self.name, self.model, 1.0, 1.0)


class Pasta:
    """Asynchronous decoding of a PASTA model's own tags."""

    name = "pasta"

    def __init__(self, engine: Engine, model: str, options: Options):
        self.engine, self.model, self.options = engine, model, options

    def answer(self, prompt: str | list[dict]) -> dict:
        r = self.engine.generate(prompt, mode="pasta", options=self.options)
        costs = measure(r.stored, self.engine.tokenizer)
        return record(r, self.name, self.model, costs.theoretical_speedup, costs.parallelism)


class SkeletonOfThought:
    """Skeleton-of-Thought (Ning et al., 2024): the model writes a skeleton of points, then every point
    is expanded at once, in one batched pass. Our own prompts, in the method's spirit."""

    name = "sot"

    def __init__(self, engine: Engine, model: str, options: Options, max_points: int = 8):
        self.engine, self.model, self.options, self.max_points = engine, model, options, max_points

    def answer(self, prompt: str | list[dict]) -> dict:
        e, tok = self.engine, self.engine.tokenizer
        # a conversation's earlier turns come before the skeleton and expansion prompts, about its last question
        history, instruction = ([], prompt) if isinstance(prompt, str) else (prompt[:-1], prompt[-1]["content"])
        # the skeleton is the method's structure, as PASTA's tags are: spared by the repetition penalty (with it the
        # numbered points broke and every answer fell back to plain decoding)
        skeleton_opts = Options(**{**self.options.__dict__, "max_new_tokens": min(128, self.options.max_new_tokens),
                                   "repetition_penalty": 1.0})
        start = time.perf_counter()
        sk = e.generate(history + [{"role": "user", "content": SKELETON_PROMPT.format(question=instruction)}],
                        mode="sequential", options=skeleton_opts)
        points = skeleton_points(sk.text, self.max_points)
        if len(points) < 2:  # no usable skeleton: answer plainly, and say so
            plain = e.generate(prompt, mode="sequential", options=self.options)
            r = record(plain, self.name, self.model, None, None, fallback=True)
            return {**r, "wall_time": time.perf_counter() - start, "steps": sk.steps + plain.steps,
                    "tokens": r["tokens"] + sum(sk.thread_tokens)}
        skeleton = "\n".join(f"{n}. {text}" for n, text in points)
        per_point = max(16, (self.options.max_new_tokens - sum(sk.thread_tokens)) // len(points))
        prompts = []
        for n, text in points:
            messages = history + [{"role": "user", "content": EXPAND_PROMPT.format(
                question=instruction, skeleton=skeleton, index=n)}]
            prompts.append(prompt_ids(tok, messages) + encode(tok, f"{n}. {text}"))
        expand_opts = Options(**{**self.options.__dict__, "max_new_tokens": per_point, "stop": ("\n",)})
        expansions = e.generate_batch(prompts, expand_opts, batch_size=len(prompts))
        wall = time.perf_counter() - start
        text = "\n".join(f"{n}. {point}{x.text}" for (n, point), x in zip(points, expansions))
        longest = max(sum(x.thread_tokens) for x in expansions)
        steps = sk.steps + longest
        sequential = len(encode(tok, text))
        tokens = sum(sk.thread_tokens) + sum(sum(x.thread_tokens) for x in expansions)
        return {"method": self.name, "model": self.model, "text": text, "stored": f"[skeleton]\n{sk.text}",
                "tokens": tokens, "steps": steps, "threads": len(points), "wall_time": wall,
                "theoretical_speedup": sequential / steps, "parallelism": tokens / steps, "finish_reason": "stop",
                "repairs": [], "fallback": False}
