"""Pasta-Lang over a serving engine: the interpreter as a client of any OpenAI-compatible
/v1/completions endpoint (vLLM or SGLang with prefix caching, or `python -m interpreter serve`).

Main streams a plain completion. Each promise it writes becomes a concurrent completion whose
prompt is everything main had written up to that promise plus `<async>`, stopped at `</async>`:
it shares its prefix with main's request, which a prefix cache reuses. A `<sync/>` closes main's
stream; once every block has returned, main resumes with a new request whose prompt is the stored
form so far (blocks in place), so it now reads the blocks.

How this differs from the in-process engine, plainly:
- positions are the server's own, consecutive in the order of each request's prompt: main does not
  jump over the `tokens` a promise reserves, and after a sync every token sits where the stored
  form puts it;
- visibility after a re-join is plain causal attention over the stored form, so main text written
  between a block and the sync that follows it now sees that block (the engine hides it until the
  sync); before the re-join, main and blocks see exactly what they see in the engine;
- every re-join re-reads the stored form (cheap with a prefix cache, a full prefill without).
The same stored-form structure comes out; the tokens may differ where those differences matter.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from .parser import make_block, make_document, make_sync, parse, render
from .tags import ASYNC_CLOSE, CLOSE_TAG, OPEN_TAG, PROMISE, SYNC, BadTag, Lexer, Tag, Text


@dataclass
class RemoteResult:
    text: str
    stored: str
    threads: int
    requests: int
    wall_time: float
    repairs: list[str] = field(default_factory=list)


class RemoteInterpreter:
    def __init__(self, base_url: str, model: str, api_key: str = "none", max_tokens: int = 512,
                 max_thread_tokens: int = 256, temperature: float = 0.0, extra_body: dict | None = None,
                 timeout: float = 120.0):
        from openai import AsyncOpenAI

        self.client = AsyncOpenAI(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=2)
        self.model, self.max_tokens, self.max_thread_tokens = model, max_tokens, max_thread_tokens
        self.temperature = temperature
        # the project's own server interprets tags itself unless told to decode plainly
        self.extra_body = extra_body if extra_body is not None else {"mode": "sequential"}

    def generate(self, prompt: str) -> RemoteResult:
        """`prompt` is the raw prompt text (chat template already applied)."""
        return asyncio.run(self.agenerate(prompt))

    async def agenerate(self, prompt: str, max_rejoins: int = 32) -> RemoteResult:
        start = time.perf_counter()
        self._repairs: list[str] = []
        self._requests = 0
        parts: list = []  # the stored form so far, every block in place
        for _ in range(max_rejoins):
            written, ended = await self._main(prompt, render(make_document(parts)))
            for item in written:  # the sync (or the end): every block returns, then main reads them
                if isinstance(item, str):
                    parts.append(item)
                elif isinstance(item, Tag):
                    parts.append(make_sync(item.raw))
                else:
                    tag, task = item
                    parts.append(make_block(tag.topic, tag.tokens, await task, tag.raw))
            if ended:
                break
        stored = render(make_document(parts))
        doc = parse(stored)
        return RemoteResult(doc.stripped, stored, len(doc.blocks), self._requests, time.perf_counter() - start,
                            self._repairs)

    async def _main(self, prompt: str, stored: str):
        """Streams main on from the stored form so far, up to a sync or the end. Returns (what main wrote: text,
        (promise, its block's task) and the sync tag, in order; whether main ended)."""
        lexer, written = Lexer(), []
        seen = prompt + stored  # what a block forked now sees: its promise's view, no block still running
        self._requests += 1
        stream = await self.client.completions.create(
            model=self.model, prompt=prompt + stored, max_tokens=self.max_tokens,
            temperature=self.temperature, stream=True, extra_body=self.extra_body)
        try:
            async for chunk in stream:
                for ev in lexer.feed(chunk.choices[0].text or "" if chunk.choices else ""):
                    if isinstance(ev, Text):
                        written.append(ev.text)
                        seen += ev.text
                    elif isinstance(ev, Tag) and ev.kind == PROMISE:
                        seen += ev.raw
                        written.append((ev, asyncio.create_task(self._block(seen + OPEN_TAG))))
                    elif isinstance(ev, Tag) and ev.kind == SYNC:
                        return [*written, ev], False  # closing the stream ends main's request
                    else:
                        raw = ev.raw if isinstance(ev, (Tag, BadTag)) else ""
                        self._repairs.append(f"main: dropped {raw[:40]!r}")
        finally:
            await stream.close()
        written += [ev.text for ev in lexer.close() if isinstance(ev, Text)]
        return written, True

    async def _block(self, context: str) -> str:
        self._requests += 1
        reply = await self.client.completions.create(
            model=self.model, prompt=context, max_tokens=self.max_thread_tokens, temperature=self.temperature,
            stop=[CLOSE_TAG], extra_body=self.extra_body)
        kept = ""
        lexer = Lexer()
        for ev in lexer.feed(reply.choices[0].text or "") + lexer.close():
            if isinstance(ev, Text):
                kept += ev.text
            elif isinstance(ev, Tag) and ev.kind == ASYNC_CLOSE:
                break
            else:  # no nesting: tags inside a block are dropped
                self._repairs.append(f"block: dropped {ev.raw[:40]!r}")
        return kept
