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
- every re-join re-reads the stored form (cheap with a prefix cache, a full prefill without);
- budgets are per request: `max_new_tokens` caps each of main's requests, `max_thread_tokens` each
  block's; `stop_loops` and the tag guard are the engine's own and do not apply.
The same stored-form structure comes out; the tokens may differ where those differences matter.

`python -m interpreter generate|serve --backend openai --base_url URL` use it; `RemoteBackend` is
the server's backend over it (interpreter.async_engine.Backend).
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field

from .async_engine import Overloaded
from .cost import measure
from .layout import encode, pieces, prompt_ids
from .options import Options, Result
from .parser import make_block, make_document, make_sync, parse, render
from .tags import ASYNC_CLOSE, CLOSE_TAG, OPEN_TAG, PROMISE, SYNC, BadTag, Lexer, Tag, Text


class RemoteError(RuntimeError):
    """The serving engine cannot be reached, or refused a request; the message is one line."""


def _describe(err: Exception, base_url: str) -> str:
    import openai

    if isinstance(err, openai.APIConnectionError):  # refused, unknown host, timed out
        why = err.__cause__ or err
        return f"cannot reach the serving engine at {base_url}: {_line(why) or type(why).__name__}"
    if isinstance(err, openai.APIStatusError):
        body = err.body if isinstance(err.body, dict) else {}
        return f"the serving engine at {base_url} answered {err.status_code}: {_line(body.get('message') or err)}"
    return f"the serving engine at {base_url} failed: {_line(err)}"


def _line(what) -> str:
    return " ".join(str(what).split())[:300]


def served_models(base_url: str, api_key: str = "none", timeout: float = 10.0) -> list[dict]:
    """The models an OpenAI-compatible engine serves (/v1/models), as dicts (`id`; vLLM adds `max_model_len`)."""
    import openai

    try:
        with openai.OpenAI(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=1) as client:
            return [m.model_dump() for m in client.models.list().data]
    except openai.APIError as err:
        raise RemoteError(_describe(err, base_url)) from None


def prompt_text(tokenizer, prompt: str | list[dict]) -> str:
    """A prompt (one user message, or messages) as the raw text /v1/completions takes: through the chat
    template with the generation prompt, as `layout.prompt_ids` tokenizes it."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return "\n".join(m["content"] for m in messages)


@dataclass
class RemoteResult:
    text: str
    stored: str
    threads: int
    requests: int
    wall_time: float
    repairs: list[str] = field(default_factory=list)
    finish_reason: str = "stop"  # "length" when main's last request ran out of tokens
    mode: str = "pasta"

    def summary(self) -> dict:
        return {"text": self.text, "stored": self.stored, "mode": self.mode, "finish_reason": self.finish_reason,
                "threads": self.threads, "requests": self.requests, "wall_time": round(self.wall_time, 4),
                "repairs": self.repairs}


@dataclass
class _Call:
    """One answer's state: several may decode at once over one client (the server)."""

    options: Options
    slots: asyncio.Semaphore  # async threads decoding at once (max_threads)
    repairs: list[str] = field(default_factory=list)
    requests: int = 0
    finish: str = "stop"
    tasks: list[asyncio.Task] = field(default_factory=list)


class RemoteInterpreter:
    def __init__(self, base_url: str, model: str, api_key: str = "none", max_tokens: int = 512,
                 max_thread_tokens: int = 256, temperature: float = 0.0, extra_body: dict | None = None,
                 timeout: float = 120.0):
        from openai import AsyncOpenAI

        self.base_url = base_url
        self.client = AsyncOpenAI(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=2)
        self.model = model
        self.defaults = Options(max_new_tokens=max_tokens, max_thread_tokens=max_thread_tokens,
                                temperature=temperature)
        # the project's own server interprets tags itself unless told to decode plainly
        self.extra_body = extra_body if extra_body is not None else {"mode": "sequential"}

    def generate(self, prompt: str, options: Options | None = None, mode: str = "pasta") -> RemoteResult:
        """`prompt` is the raw prompt text (chat template already applied)."""
        return asyncio.run(self.agenerate(prompt, options, mode))

    async def agenerate(self, prompt: str, options: Options | None = None, mode: str = "pasta",
                        max_rejoins: int = 32) -> RemoteResult:
        """Decodes one answer. `options`: max_new_tokens (each of main's requests), max_thread_tokens, max_threads,
        temperature, top_p, top_k, repetition_penalty, seed and stop (main's) apply; `mode` "sequential" is one
        plain completion. Raises RemoteError when the engine cannot be reached or refuses a request."""
        if mode not in ("pasta", "sequential"):
            raise ValueError(f"mode must be 'pasta' or 'sequential', not {mode!r}")
        opts = options or self.defaults
        call = _Call(opts, asyncio.Semaphore(opts.max_threads))
        start = time.perf_counter()
        try:
            if mode == "sequential":
                call.requests += 1
                reply = await self.client.completions.create(prompt=prompt, **self._sampling(opts, main=True))
                text = reply.choices[0].text or ""
                finish = "length" if reply.choices[0].finish_reason == "length" else "stop"
                return RemoteResult(text, text, 0, 1, time.perf_counter() - start, [], finish, mode)
            return await self._pasta(call, prompt, max_rejoins, start)
        except Exception as err:
            import openai

            if isinstance(err, openai.APIError):
                raise RemoteError(_describe(err, self.base_url)) from None
            raise
        finally:  # a failed or cancelled answer leaves no block running
            for task in call.tasks:
                task.cancel()
            await asyncio.gather(*call.tasks, return_exceptions=True)

    async def _pasta(self, call: _Call, prompt: str, max_rejoins: int, start: float) -> RemoteResult:
        parts: list = []  # the stored form so far, every block in place
        ended = False
        for _ in range(max_rejoins):
            written, ended = await self._main(call, prompt, render(make_document(parts)))
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
        return RemoteResult(doc.stripped, stored, len(doc.blocks), call.requests, time.perf_counter() - start,
                            call.repairs, call.finish if ended else "length")

    def _sampling(self, opts: Options, main: bool) -> dict:
        body = dict(self.extra_body)
        if opts.top_k:
            body["top_k"] = opts.top_k  # vLLM's and SGLang's extension
        if opts.repetition_penalty != 1.0:  # theirs too; a remote engine counts the tags in the text it is sent
            body["repetition_penalty"] = opts.repetition_penalty
        kw = {"model": self.model, "temperature": opts.temperature, "top_p": opts.top_p, "extra_body": body,
              "max_tokens": opts.max_new_tokens if main else opts.max_thread_tokens}
        if opts.seed is not None:
            kw["seed"] = opts.seed
        stop = list(opts.stop) if main else [CLOSE_TAG]
        if stop:
            kw["stop"] = stop
        return kw

    async def _main(self, call: _Call, prompt: str, stored: str):
        """Streams main on from the stored form so far, up to a sync or the end. Returns (what main wrote: text,
        (promise, its block's task) and the sync tag, in order; whether main ended)."""
        lexer, written = Lexer(), []
        seen = prompt + stored  # what a block forked now sees: its promise's view, no block still running
        call.requests += 1
        stream = await self.client.completions.create(prompt=prompt + stored, stream=True,
                                                      **self._sampling(call.options, main=True))
        try:
            async for chunk in stream:
                choice = chunk.choices[0] if chunk.choices else None
                if choice is not None and choice.finish_reason:
                    call.finish = "length" if choice.finish_reason == "length" else "stop"
                for ev in lexer.feed(choice.text or "" if choice is not None else ""):
                    if isinstance(ev, Text):
                        written.append(ev.text)
                        seen += ev.text
                    elif isinstance(ev, Tag) and ev.kind == PROMISE:
                        seen += ev.raw
                        task = asyncio.create_task(self._block(call, seen + OPEN_TAG))
                        call.tasks.append(task)
                        written.append((ev, task))
                    elif isinstance(ev, Tag) and ev.kind == SYNC:
                        return [*written, ev], False  # closing the stream ends main's request
                    else:
                        raw = ev.raw if isinstance(ev, (Tag, BadTag)) else ""
                        call.repairs.append(f"main: dropped {raw[:40]!r}")
        finally:
            await stream.close()
        written += [ev.text for ev in lexer.close() if isinstance(ev, Text)]
        return written, True

    async def _block(self, call: _Call, context: str) -> str:
        async with call.slots:
            call.requests += 1
            reply = await self.client.completions.create(prompt=context, **self._sampling(call.options, main=False))
        kept = ""
        lexer = Lexer()
        for ev in lexer.feed(reply.choices[0].text or "") + lexer.close():
            if isinstance(ev, Text):
                kept += ev.text
            elif isinstance(ev, Tag) and ev.kind == ASYNC_CLOSE:
                break
            else:  # no nesting: tags inside a block are dropped
                call.repairs.append(f"block: dropped {ev.raw[:40]!r}")
        return kept


class _Handle:
    """A submitted request, as the server holds it: `done`, `cancel()`."""

    def __init__(self, future):
        self._future = future

    @property
    def done(self) -> bool:
        return self._future.done()

    def cancel(self) -> None:
        self._future.cancel()


class RemoteBackend:
    """The server's backend (interpreter.async_engine.Backend) over a serving engine: `serve --backend openai`.

    Requests decode through one RemoteInterpreter on an event loop thread of their own, up to `max_batch` at
    once (the engine behind batches them); more wait, up to `max_queue` (then Overloaded: a 503). The
    tokenizer applies the chat template and counts tokens; `Result.steps` is the cost model's parallel steps
    of the stored form (the engine's own steps are not visible from here), and the answer streams as one piece
    when it is complete. A request still decoding at its deadline fails ("error")."""

    def __init__(self, remote: RemoteInterpreter, tokenizer, context_length: int | None = None,
                 max_batch: int = 16, max_queue: int = 64):
        self.remote, self.tokenizer, self.context_length = remote, tokenizer, context_length
        self.max_batch, self.max_queue = max_batch, max_queue
        self.running = self.waiting = 0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def prompt_ids(self, prompt) -> list[int]:
        return prompt_ids(self.tokenizer, prompt)

    def start(self) -> None:
        if self._thread is None:
            self._loop = asyncio.new_event_loop()
            self._slots = asyncio.Semaphore(self.max_batch)
            self._thread = threading.Thread(target=self._loop.run_forever, name="pasta-remote", daemon=True)
            self._thread.start()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Cancels every request and closes the client."""
        if self._thread is None:
            return

        async def drain():
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.remote.client.close()

        try:
            asyncio.run_coroutine_threadsafe(drain(), self._loop).result(timeout)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)
            if not self._thread.is_alive():
                self._loop.close()
            self._thread = None

    def submit(self, prompt_ids: list[int], mode: str, options: Options, subscriber, deadline: float | None = None,
               stream: bool = True) -> _Handle:
        if self._thread is None:
            raise RuntimeError("RemoteBackend.start() first")
        with self._lock:
            if self.waiting >= self.max_queue:
                raise Overloaded(f"{self.waiting} requests are waiting already (--max-queue {self.max_queue})")
            self.waiting += 1
        return _Handle(asyncio.run_coroutine_threadsafe(
            self._run(prompt_ids, mode, options, subscriber, deadline, stream), self._loop))

    async def _run(self, ids, mode, options, subscriber, deadline, stream) -> None:
        began = time.perf_counter()
        try:
            answer = await self._decode(ids, mode, options, deadline)
            result = self._result(answer, len(ids), time.perf_counter() - began)
        except Exception as err:  # noqa: BLE001 - the client learns why (a cancel is no Exception: it goes on up)
            subscriber({"error": str(err) if isinstance(err, RemoteError) else f"{type(err).__name__}: {_line(err)}"})
            return
        if stream and result.text:
            subscriber({"delta": result.text})
        subscriber({"result": result})

    async def _decode(self, ids, mode, options, deadline) -> RemoteResult:
        try:
            await self._slots.acquire()
        finally:  # taken, or cancelled while waiting
            with self._lock:
                self.waiting -= 1
        with self._lock:
            self.running += 1
        try:
            left = None if deadline is None else max(deadline - time.perf_counter(), 0.001)
            try:
                return await asyncio.wait_for(self.remote.agenerate(self._text(ids), options, mode), left)
            except asyncio.TimeoutError:
                raise RemoteError("the serving engine did not finish the answer within the server's --timeout") \
                    from None
        finally:
            with self._lock:
                self.running -= 1
            self._slots.release()

    def _text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, clean_up_tokenization_spaces=False)  # the prompt's text, byte for byte

    def _result(self, answer: RemoteResult, prompt_tokens: int, wall: float) -> Result:
        tok = self.tokenizer
        if answer.mode == "sequential":
            threads, steps = [len(encode(tok, answer.text))], len(encode(tok, answer.text))
        else:
            doc = parse(answer.stored)
            threads = [0] * (len(doc.blocks) + 1)
            for piece in pieces(doc):
                if piece.kind != "open":  # a block's forced <async> is not drawn
                    threads[piece.thread] += len(encode(tok, piece.text))
            steps = measure(doc, tok).parallel_steps
        return Result(text=answer.text, stored=answer.stored, mode=answer.mode, finish_reason=answer.finish_reason,
                      prompt_tokens=prompt_tokens, tokens=sum(threads), thread_tokens=threads, steps=steps,
                      threads=answer.threads, wall_time=wall, prefill_time=0.0, repairs=answer.repairs)
