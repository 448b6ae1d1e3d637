"""An OpenAI-compatible server over the engine: /v1/chat/completions, /v1/completions, /v1/models.

Requests from all clients decode together: one engine thread steps the engine (`AsyncEngine`),
a request joins the running batch after its prefill and leaves it when done, up to the engine's
`max_batch` at once; more wait in a bounded queue (503 beyond it). A client that goes away cancels
its decoding at the next step; so does the deadline. Replies carry the usual fields plus
`usage.parallel_steps`/`usage.threads` and a `pasta` object with the stored form and any repairs.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from .async_engine import AsyncEngine, Backend, Overloaded
from .engine import Engine
from .layout import encode
from .openai_api import (
    MAX_BODY_BYTES,
    APIKeyMiddleware,
    BodyLimitMiddleware,
    ChatRequest,
    CompletionRequest,
    _Sampling,
    error_body,
    error_response,
    install_error_handlers,
)
from .options import MAX_SEED, Options

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def create_app(engine: Engine | Backend, model_name: str, mode: str = "pasta", api_key: str | None = None,
               defaults: Options | None = None, max_body_bytes: int = MAX_BODY_BYTES, max_queue: int = 64,
               max_tokens_limit: int | None = None, timeout: float = 600.0) -> FastAPI:
    """The server's ASGI app. `api_key` guards /v1/ (not /health); bodies over `max_body_bytes` get a 413;
    beyond `max_queue` waiting requests a 503; `max_tokens` above `max_tokens_limit` (default: the model's
    context) or prompt + max_tokens above the context a 400; a request still decoding after `timeout`
    seconds ends with what it has (finish_reason "length"). `engine`: the local Engine (stepped by an
    AsyncEngine holding up to `max_queue` waiting requests), or any other Backend, which brings its own limits
    (`interpreter.remote.RemoteBackend`: `serve --backend openai`)."""
    core = AsyncEngine(engine, max_queue) if isinstance(engine, Engine) else engine

    @asynccontextmanager
    async def lifespan(app):
        core.start()
        yield
        await asyncio.to_thread(core.shutdown)  # cancels what still decodes: SIGTERM never waits on a decode

    app = FastAPI(title="PASTA interpreter", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.stats = {"requests": 0, "cancelled": 0, "rejected": 0, "timeouts": 0}
    app.state.core = core
    defaults = defaults or Options()
    context = core.context_length
    limit = max_tokens_limit or context
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes)
    if api_key:  # added last, so it runs first: a client without the key is not read
        app.add_middleware(APIKeyMiddleware, api_key=api_key)

    @app.get("/health")
    async def health():
        # an unauthenticated route: a local model's path would tell strangers about the machine
        shown = {} if _is_path(model_name) else {"model": model_name}
        return {"status": "ok", **shown, **app.state.stats, "running": core.running, "waiting": core.waiting}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "pasta"}]}

    def options(req: _Sampling, max_tokens: int | None, index: int) -> Options:
        stop = [req.stop] if isinstance(req.stop, str) else (req.stop or [])
        seed = None if req.seed is None else (req.seed + index) % MAX_SEED  # n > 1: each choice its own draw
        return Options(**{**defaults.__dict__, "max_new_tokens": max_tokens or defaults.max_new_tokens,
                          "temperature": req.temperature, "top_p": req.top_p, "seed": seed,
                          "top_k": defaults.top_k if req.top_k is None else req.top_k, "stop": tuple(stop),
                          "repetition_penalty": req.repetition_penalty or defaults.repetition_penalty})

    async def run(request: Request, req: _Sampling, prompt, chat: bool, max_tokens: int | None):
        where = "messages" if chat else "prompt"
        if req.model not in (None, model_name):
            return error_response(404, f"model {req.model!r} is not served here; this server serves {model_name!r}",
                                  param="model")
        wanted = max_tokens or defaults.max_new_tokens
        if limit and wanted > limit:
            return error_response(400, f"max_tokens {wanted} is above this server's limit {limit}",
                                  param="max_tokens")
        ids = await asyncio.to_thread(core.prompt_ids, prompt)
        if context and len(ids) + wanted > context:
            return error_response(400, f"this model's context is {context} tokens; the {where} takes {len(ids)} "
                                  f"and max_tokens {wanted}: {len(ids) + wanted} in all", param=where,
                                  code="context_length_exceeded")
        try:
            opts = [options(req, max_tokens, i) for i in range(req.n)]
        except ValueError as err:
            return error_response(400, str(err))
        loop, updates = asyncio.get_running_loop(), asyncio.Queue()
        deadline = time.perf_counter() + timeout
        handles = []
        try:
            for i, o in enumerate(opts):
                deliver = (lambda update, i=i: loop.call_soon_threadsafe(updates.put_nowait, (i, update)))
                handles.append(core.submit(ids, req.mode or mode, o, deliver, deadline, stream=req.stream))
        except Overloaded as err:
            for h in handles:
                h.cancel()
            app.state.stats["rejected"] += 1
            return error_response(503, f"server overloaded: {err}; try again shortly", "server_error",
                                  code="overloaded", headers={"Retry-After": "1"})
        app.state.stats["requests"] += 1
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        if req.stream:
            return StreamingResponse(_sse(handles, updates, rid, chat, req), media_type="text/event-stream")
        results: list = [None] * len(handles)
        while any(r is None for r in results):
            try:
                i, update = await asyncio.wait_for(updates.get(), timeout=0.2)
            except TimeoutError:
                if await request.is_disconnected():  # nobody will read the answer: free the batch's rows
                    _cancel(handles)
                    return error_response(499, "client went away")
                continue
            if "error" in update:
                return error_response(500, f"decoding failed: {update['error']}", "server_error")
            if "result" in update:
                results[i] = update["result"]
        app.state.stats["timeouts"] += any(r.finish_reason == "timeout" for r in results)
        body = {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
                "model": model_name, "usage": _usage(results), "pasta": _pasta(results[0])}
        if len(results) > 1:
            body["pasta"]["choices"] = [_pasta(r) for r in results]
        if chat:
            body["choices"] = [{"index": i, "message": {"role": "assistant", "content": r.text},
                                "finish_reason": _finish(r)} for i, r in enumerate(results)]
        else:
            body["choices"] = [{"index": i, "text": r.text, "finish_reason": _finish(r), "logprobs": None}
                               for i, r in enumerate(results)]
        return body

    def _cancel(handles) -> None:
        live = [h for h in handles if not h.done]
        for h in live:
            h.cancel()
        app.state.stats["cancelled"] += bool(live)

    async def _sse(handles, updates, rid, chat, req):
        def chunk(index: int, delta: str | None, finish: str | None, usage=None, first: bool = False) -> str:
            if chat:
                message = {"role": "assistant", "content": ""} if first else {"content": delta}
                choice = {"index": index, "delta": message if first or delta is not None else {},
                          "finish_reason": finish}
                obj = {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()),
                       "model": model_name, "choices": [choice]}
            else:
                obj = {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model_name,
                       "choices": [{"index": index, "text": delta or "", "finish_reason": finish, "logprobs": None}]}
            if usage is not None:
                obj["choices"] = [] if index < 0 else obj["choices"]
                obj["usage"] = usage
            return f"data: {json.dumps(obj)}\n\n"

        results: list = [None] * len(handles)
        try:
            if chat:
                for i in range(len(handles)):
                    yield chunk(i, None, None, first=True)
            while any(r is None for r in results):
                i, update = await updates.get()
                if "error" in update:
                    yield f"data: {json.dumps(error_body(update['error'], 'server_error'))}\n\n"
                    return
                if "delta" in update:
                    yield chunk(i, update["delta"], None)
                if "result" in update:
                    results[i] = update["result"]
                    yield chunk(i, None, _finish(results[i]))
            app.state.stats["timeouts"] += any(r.finish_reason == "timeout" for r in results)
            if (req.stream_options or {}).get("include_usage"):
                yield chunk(-1, None, None, usage=_usage(results))
            yield "data: [DONE]\n\n"
        finally:  # the client went away (the generator is closed early): stop its decoding
            _cancel(handles)

    @app.post("/v1/chat/completions")
    async def chat(request: Request, req: ChatRequest):
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in req.messages]
        return await run(request, req, messages, True, req.max_completion_tokens or req.max_tokens)

    @app.post("/v1/completions")
    async def completions(request: Request, req: CompletionRequest):
        return await run(request, req, encode(core.tokenizer, req.prompt), False, req.max_tokens)

    return app


def _is_path(name: str) -> bool:
    return os.path.isabs(name) or name.startswith((".", "~")) or os.path.exists(name)


def _finish(result) -> str:
    return "length" if result.finish_reason in ("length", "timeout") else "stop"


def _usage(results) -> dict:
    prompt, completion = results[0].prompt_tokens, sum(sum(r.thread_tokens) for r in results)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "parallel_steps": max(r.steps for r in results), "threads": sum(r.threads for r in results)}


def _pasta(result) -> dict:
    return {"stored": result.stored, "mode": result.mode, "finish_reason": result.finish_reason,
            "steps": result.steps, "threads": result.threads, "thread_tokens": result.thread_tokens,
            "wall_time": round(result.wall_time, 4), "repairs": result.repairs}


def serve(engine: Engine | Backend, model_name: str, host: str = "127.0.0.1", port: int = 8000, mode: str = "pasta",
          api_key: str | None = None, defaults: Options | None = None, **limits) -> None:
    """Runs the server (uvicorn); `limits`: create_app's max_body_bytes, max_queue, max_tokens_limit, timeout."""
    import uvicorn

    if host not in LOOPBACK and not api_key:
        raise SystemExit(f"refusing to serve on {host} without --api-key: anyone who can reach it could use it")
    uvicorn.run(create_app(engine, model_name, mode, api_key, defaults, **limits), host=host, port=port,
                log_level="info", timeout_graceful_shutdown=5)
