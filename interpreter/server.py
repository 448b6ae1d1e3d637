"""An OpenAI-compatible server over the engine: /v1/chat/completions, /v1/completions, /v1/models.

One engine, one request at a time: requests wait their turn in arrival order, each decodes in
a worker thread with its own cache, and a client that goes away cancels its decoding at the
next step. Replies carry the usual fields plus `usage.parallel_steps`/`usage.threads` and a
`pasta` object with the stored form (tags in place) and any repairs.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from .engine import Engine, Options
from .layout import encode

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[dict]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.get("text", "") for part in self.content if part.get("type") == "text")


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="allow")  # unknown OpenAI fields are accepted and ignored
    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict | None = None
    n: int = Field(default=1, ge=1, le=1)
    mode: Literal["pasta", "sequential"] | None = None  # extension: decode with or without threads


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)


class CompletionRequest(_Sampling):
    prompt: str


def _error(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None):
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": None}},
                        status_code=status)


def create_app(engine: Engine, model_name: str, mode: str = "pasta", api_key: str | None = None,
               defaults: Options | None = None) -> FastAPI:
    app = FastAPI(title="PASTA interpreter", docs_url=None, redoc_url=None)
    turn = asyncio.Lock()  # one request decodes at a time; the others wait in arrival order
    app.state.stats = {"requests": 0, "cancelled": 0}
    defaults = defaults or Options()

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        return _error(400, f"{where or 'body'}: {first.get('msg', 'invalid request')}", param=where)

    @app.middleware("http")
    async def check_key(request: Request, call_next):
        wrong_key = request.headers.get("authorization", "") != f"Bearer {api_key}"
        if api_key and request.url.path.startswith("/v1/") and wrong_key:
            return _error(401, "missing or wrong API key (Authorization: Bearer ...)", "authentication_error")
        return await call_next(request)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name, **app.state.stats}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "pasta"}]}

    def options(req: _Sampling, max_tokens: int | None) -> Options:
        stop = [req.stop] if isinstance(req.stop, str) else (req.stop or [])
        return Options(**{**defaults.__dict__, "max_new_tokens": max_tokens or defaults.max_new_tokens,
                          "temperature": req.temperature, "top_p": req.top_p, "seed": req.seed,
                          "stop": tuple(stop)})

    async def run(request: Request, req: _Sampling, prompt, chat: bool, max_tokens: int | None):
        if req.model not in (None, model_name):
            return _error(404, f"model {req.model!r} is not served here; this server serves {model_name!r}",
                          param="model")
        opts = options(req, max_tokens)
        how = req.mode or mode
        app.state.stats["requests"] += 1
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        if req.stream:
            return StreamingResponse(_sse(request, prompt, how, opts, rid, chat, req), media_type="text/event-stream")
        cancel = threading.Event()
        async with turn:
            if await request.is_disconnected():
                app.state.stats["cancelled"] += 1
                return _error(499, "client went away")
            task = asyncio.create_task(asyncio.to_thread(engine.generate, prompt, how, opts, cancel=cancel))
            while not task.done():
                await asyncio.wait({task}, timeout=0.2)
                if not task.done() and await request.is_disconnected():
                    cancel.set()
                    app.state.stats["cancelled"] += 1
            result = await task
        body = {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
                "model": model_name, "usage": _usage(result), "pasta": _pasta(result)}
        if chat:
            body["choices"] = [{"index": 0, "message": {"role": "assistant", "content": result.text},
                                "finish_reason": _finish(result)}]
        else:
            body["choices"] = [{"index": 0, "text": result.text, "finish_reason": _finish(result), "logprobs": None}]
        return body

    async def _sse(request: Request, prompt, how, opts, rid, chat, req):
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()

        def work():
            try:
                for update in engine.stream(prompt, how, opts, cancel=cancel):
                    loop.call_soon_threadsafe(queue.put_nowait, update)
            except Exception as err:  # noqa: BLE001 - reported to the client, never a hung stream
                loop.call_soon_threadsafe(queue.put_nowait, {"error": str(err)})

        def chunk(delta: str | None, finish: str | None, usage=None, first: bool = False) -> str:
            if chat:
                message = {"role": "assistant", "content": ""} if first else {"content": delta}
                choice = {"index": 0, "delta": message if first or delta is not None else {}, "finish_reason": finish}
                obj = {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()),
                       "model": model_name, "choices": [choice]}
            else:
                obj = {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model_name,
                       "choices": [{"index": 0, "text": delta or "", "finish_reason": finish, "logprobs": None}]}
            if usage is not None:
                obj["usage"] = usage
            return f"data: {json.dumps(obj)}\n\n"

        async with turn:
            worker = asyncio.create_task(asyncio.to_thread(work))
            try:
                if chat:
                    yield chunk(None, None, first=True)
                while True:
                    update = await queue.get()
                    if "error" in update:
                        yield f"data: {json.dumps({'error': {'message': update['error'], 'type': 'server_error'}})}\n\n"
                        break
                    if "delta" in update:
                        yield chunk(update["delta"], None)
                    if "result" in update:
                        result = update["result"]
                        include = (req.stream_options or {}).get("include_usage")
                        yield chunk(None, _finish(result), _usage(result) if include else None)
                        yield "data: [DONE]\n\n"
                        break
            finally:
                if not worker.done():  # the client went away: stop decoding, then free the turn
                    cancel.set()
                    app.state.stats["cancelled"] += 1
                await worker

    @app.post("/v1/chat/completions")
    async def chat(request: Request, req: ChatRequest):
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in req.messages]
        return await run(request, req, messages, True, req.max_completion_tokens or req.max_tokens)

    @app.post("/v1/completions")
    async def completions(request: Request, req: CompletionRequest):
        return await run(request, req, encode(engine.tokenizer, req.prompt), False, req.max_tokens)

    return app


def _finish(result) -> str:
    return "length" if result.finish_reason == "length" else "stop"


def _usage(result) -> dict:
    completion = sum(result.thread_tokens)
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": completion,
            "total_tokens": result.prompt_tokens + completion, "parallel_steps": result.steps,
            "threads": result.threads}


def _pasta(result) -> dict:
    return {"stored": result.stored, "mode": result.mode, "steps": result.steps, "threads": result.threads,
            "thread_tokens": result.thread_tokens, "wall_time": round(result.wall_time, 4), "repairs": result.repairs}


def serve(engine: Engine, model_name: str, host: str = "127.0.0.1", port: int = 8000, mode: str = "pasta",
          api_key: str | None = None, defaults: Options | None = None) -> None:
    import uvicorn

    if host not in LOOPBACK and not api_key:
        raise SystemExit(f"refusing to serve on {host} without --api-key: anyone who can reach it could use it")
    uvicorn.run(create_app(engine, model_name, mode, api_key, defaults), host=host, port=port, log_level="info")
