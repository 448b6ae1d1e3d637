"""The OpenAI protocol around the server: request models, the error body, and the ASGI middlewares
that check the API key and cap the request body.

Every error a client gets has OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`.
The middlewares are plain ASGI (not Starlette's BaseHTTPMiddleware, behind which an endpoint never
sees the client disconnect, so a client that went away would not cancel its decoding).
"""

from __future__ import annotations

import hmac
import json
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from .options import MAX_SEED

MAX_BODY_BYTES = 1 << 20


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                   code: str | None = None, headers: dict | None = None) -> Response:
    """An OpenAI error reply. ASCII JSON, so that text the client sent (a lone surrogate, say) can be echoed."""
    return Response(json.dumps(error_body(message, kind, param, code)), status_code=status,
                    media_type="application/json", headers=headers)


async def _send(send, response: Response) -> None:
    await send({"type": "http.response.start", "status": response.status_code,
                "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})


# -- request models ------------------------------------------------------------------------------------

def _valid_unicode(*texts) -> None:
    # JSON may escape a lone surrogate ("\\ud800"); Python takes it, the tokenizer does not
    for text in texts:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise PydanticCustomError("lone_surrogate", "text holds a lone UTF-16 surrogate, which is not "
                                      "valid Unicode") from None


# field → does this value ask for nothing beyond what the server does? (anything else is a 400 naming it)
UNSUPPORTED: dict[str, Any] = {
    "logprobs": lambda v: v is None or v is False,
    "top_logprobs": lambda v: v is None or v == 0,
    "tools": lambda v: not v,
    "tool_choice": lambda v: v is None or v == "none",
    "functions": lambda v: not v,
    "function_call": lambda v: v is None or v == "none",
    "response_format": lambda v: v is None or (isinstance(v, dict) and v.get("type") == "text"),
    "presence_penalty": lambda v: v is None or v == 0,
    "frequency_penalty": lambda v: v is None or v == 0,
    "logit_bias": lambda v: not v,
    "echo": lambda v: v is None or v is False,
    "suffix": lambda v: not v,
    "best_of": lambda v: v is None or v == 1,
}


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[dict]

    @field_validator("content")
    @classmethod
    def _unicode(cls, content):
        if isinstance(content, str):
            _valid_unicode(content)
        else:
            _valid_unicode(*(part["text"] for part in content if isinstance(part.get("text"), str)))
        return content

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.get("text", "") for part in self.content if part.get("type") == "text")


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="allow")  # other OpenAI fields (user, metadata, store ...) are ignored
    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)  # vLLM's extension; 0 = off, absent = the server's default
    repetition_penalty: float | None = Field(default=None, gt=0.0)  # vLLM's extension; absent = the server's default
    seed: int | None = Field(default=None, ge=0, lt=MAX_SEED)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict | None = None
    n: int = Field(default=1, ge=1, le=16)  # choices, decoded together in the batch
    mode: Literal["pasta", "sequential"] | None = None  # extension: decode with or without threads

    # asked for, these would change the answer or its form: refused rather than silently ignored
    logprobs: Any = None
    top_logprobs: Any = None
    tools: Any = None
    tool_choice: Any = None
    functions: Any = None
    function_call: Any = None
    response_format: Any = None
    presence_penalty: Any = None
    frequency_penalty: Any = None
    logit_bias: Any = None
    echo: Any = None
    suffix: Any = None
    best_of: Any = None

    @field_validator("stop")
    @classmethod
    def _unicode(cls, stop):
        _valid_unicode(*([stop] if isinstance(stop, str) else stop or []))
        return stop

    @field_validator(*UNSUPPORTED)
    @classmethod
    def _refuse(cls, value, info):
        if not UNSUPPORTED[info.field_name](value):
            raise PydanticCustomError("unsupported", f"{info.field_name} is not supported by this server "
                                      f"(got {json.dumps(value)[:80]})")
        return value


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)


class CompletionRequest(_Sampling):
    prompt: str

    @field_validator("prompt")
    @classmethod
    def _unicode_prompt(cls, prompt):
        _valid_unicode(prompt)
        return prompt


# -- errors ---------------------------------------------------------------------------------------------

def install_error_handlers(app: FastAPI) -> None:
    """Gives malformed JSON, validation errors, unknown routes, wrong methods and crashes OpenAI's error shape."""

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        if first.get("type") == "json_invalid":
            detail = first.get("ctx", {}).get("error")
            return error_response(400, "the body is not valid JSON" + (f": {detail}" if detail else ""))
        where = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        return error_response(400, f"{where or 'body'}: {first.get('msg', 'invalid request')}", param=where)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        if exc.status_code == 404:
            message = f"Invalid URL ({request.method} {request.url.path})"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        return error_response(exc.status_code, message, headers=exc.headers)

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception):
        # the traceback goes to the server log (Starlette re-raises after this reply), never to the client
        return error_response(500, f"internal server error ({type(exc).__name__}); see the server log",
                              "server_error")


# -- middlewares ----------------------------------------------------------------------------------------

class APIKeyMiddleware:
    """Answers 401 to requests under `prefix` without `Authorization: Bearer <api_key>`."""

    def __init__(self, app, api_key: str, prefix: str = "/v1/"):
        self.app = app
        self.expected = f"Bearer {api_key}".encode()
        self.prefix = prefix

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith(self.prefix):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):  # constant time: the key can't be guessed byte by byte
                return await _send(send, error_response(401, "missing or wrong API key (Authorization: Bearer ...)",
                                                        "authentication_error", code="invalid_api_key"))
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """Answers 413 to a request body over `max_bytes`, by its Content-Length or by the bytes received.

    The body is read here (at most `max_bytes` of it) and handed on to the app, then the app reads the
    connection itself, so that it still hears the client disconnect."""

    def __init__(self, app, max_bytes: int = MAX_BODY_BYTES):
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> Response:
        return error_response(413, f"the request body is over this server's limit of {self.max_bytes} bytes",
                              code="request_too_large")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await _send(send, self._too_large())
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away before its body was in
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:  # chunked (or lying) bodies: counted as they arrive
                return await _send(send, self._too_large())
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
