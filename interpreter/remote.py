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

from .parser import parse
from .tags import ASYNC_CLOSE, PROMISE, SYNC, BadTag, Lexer, Tag, Text


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
        self._blocks: dict[str, str] = {}  # block number -> content, once the block has returned
        self._repairs: list[str] = []
        self._requests = 0
        main = ""  # main's stored text, a placeholder where each block goes
        for _ in range(max_rejoins):
            main, ended, pending = await self._main(prompt, main)
            for number, task in pending:  # the sync (or the end): every block returns, then main reads them
                self._blocks[number] = await task
            if ended:
                break
        stored = self._splice(main)
        doc = parse(stored)
        return RemoteResult(doc.stripped, stored, len(doc.blocks), self._requests, time.perf_counter() - start,
                            self._repairs)

    async def _main(self, prompt: str, main: str):
        """Streams main on from the stored form so far, up to a sync or the end.
        Returns (main's text with a placeholder where each block goes, ended, [(block number, task)])."""
        lexer, pending = Lexer(), []
        self._requests += 1
        stream = await self.client.completions.create(
            model=self.model, prompt=prompt + self._splice(main), max_tokens=self.max_tokens,
            temperature=self.temperature, stream=True, extra_body=self.extra_body)
        try:
            async for chunk in stream:
                for ev in lexer.feed(chunk.choices[0].text or "" if chunk.choices else ""):
                    if isinstance(ev, Text):
                        main += ev.text
                    elif isinstance(ev, Tag) and ev.kind == PROMISE:
                        main += ev.raw
                        # the block sees what its promise saw: synced blocks, not the ones still running
                        context = prompt + self._splice(main) + "<async>"
                        number = str(len(self._blocks) + len(pending))
                        pending.append((number, asyncio.create_task(self._block(context))))
                        main += f"\x00{number}\x00"
                    elif isinstance(ev, Tag) and ev.kind == SYNC:
                        return main + ev.raw, False, pending  # closing the stream ends main's request
                    else:
                        raw = ev.raw if isinstance(ev, (Tag, BadTag)) else ""
                        self._repairs.append(f"main: dropped {raw[:40]!r}")
        finally:
            await stream.close()
        for ev in lexer.close():
            if isinstance(ev, Text):
                main += ev.text
        return main, True, pending

    async def _block(self, context: str) -> str:
        self._requests += 1
        reply = await self.client.completions.create(
            model=self.model, prompt=context, max_tokens=self.max_thread_tokens, temperature=self.temperature,
            stop=["</async>"], extra_body=self.extra_body)
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

    def _splice(self, main: str) -> str:
        """The stored form: returned blocks in place; a block still running is not there yet."""
        out, parts = [], main.split("\x00")
        for i, part in enumerate(parts):
            if i % 2 == 0:
                out.append(part)
            elif part in self._blocks:
                out.append(f"<async>{self._blocks[part]}</async>")
        return "".join(out)
