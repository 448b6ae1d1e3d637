"""The engine behind the server: one thread steps it while there is work, clients submit from anywhere.

A submitted request waits in a bounded queue (`Overloaded` when full), joins the running batch
after its prefill and leaves it when done; after every step each request's subscriber gets
{"delta": text} for what can no longer change, and {"result": Result} at its end (or
{"error": message} if the step failed). Callbacks run on the engine thread: keep them short
(the server only hands the update over to its event loop).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol

from .engine import Engine
from .options import Options
from .request import Request


class Overloaded(RuntimeError):
    """The queue of waiting requests is full."""


class Handle(Protocol):
    """A submitted request: `done` once its subscriber heard the end; `cancel()` stops it."""

    done: bool

    def cancel(self) -> None: ...


class Backend(Protocol):
    """What the server decodes with. `AsyncEngine` (the local Engine, stepped by a thread of its own) is one;
    `interpreter.remote.RemoteBackend` (Pasta-Lang over an OpenAI-compatible serving engine) another.
    `prompt_ids` tokenizes a prompt, messages through the chat template; `context_length` (None: unknown)
    bounds prompt + max_tokens; `submit` raises Overloaded when too many wait."""

    tokenizer: Any
    context_length: int | None
    running: int
    waiting: int

    def prompt_ids(self, prompt: str | list[dict] | list[int]) -> list[int]: ...

    def start(self) -> None: ...

    def shutdown(self) -> None: ...

    def submit(self, prompt_ids: list[int], mode: str, options: Options, subscriber: Callable[[dict], None],
               deadline: float | None = None, stream: bool = True) -> Handle: ...


class AsyncEngine:
    """The server's `Backend` over the local Engine."""

    def __init__(self, engine: Engine, max_queue: int = 64):
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.context_length = engine.context_length
        self.max_queue = max_queue
        self._inbox: list[Request] = []
        self._subscribers: dict[Request, tuple[Callable[[dict], None], bool]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.steps = 0

    def prompt_ids(self, prompt: str | list[dict] | list[int]) -> list[int]:
        return self.engine.prompt_ids(prompt)

    @property
    def waiting(self) -> int:
        return len(self._inbox) + len(self.engine.waiting)

    @property
    def running(self) -> int:
        return len(self.engine.running)

    def start(self) -> None:
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._loop, name="pasta-engine", daemon=True)
            self._thread.start()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Cancels every request (their subscribers get their results) and stops the engine thread."""
        with self._lock:
            for request in [*self._inbox, *self._subscribers]:
                request.cancel()
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def submit(self, prompt_ids: list[int], mode: str, options: Options, subscriber: Callable[[dict], None],
               deadline: float | None = None, stream: bool = True) -> Request:
        """Queues a request; raises Overloaded when `max_queue` requests already wait. Without `stream`
        the subscriber hears only the end."""
        request = Request(self.engine, prompt_ids, mode, options, deadline=deadline)
        with self._lock:
            if self.waiting >= self.max_queue:
                raise Overloaded(f"{self.waiting} requests are waiting already (--max-queue {self.max_queue})")
            self._inbox.append(request)
            self._subscribers[request] = subscriber, stream
        self._wake.set()
        return request

    def _loop(self) -> None:
        engine = self.engine
        while True:
            with self._lock:
                engine.waiting.extend(self._inbox)
                self._inbox.clear()
            if not engine.has_work:
                if self._stopping:
                    return
                self._wake.wait()
                self._wake.clear()
                continue
            try:
                engine.step()
            except Exception as err:  # noqa: BLE001 - every request learns why; the engine starts afresh
                self._fail(f"{type(err).__name__}: {err}")
                continue
            self.steps += 1
            self._publish()

    def _publish(self) -> None:
        with self._lock:
            subscribers = list(self._subscribers.items())
        for request, (subscriber, stream) in subscribers:
            if not request.started:
                continue  # still waiting for a place in the batch
            delta = request.take_delta() if stream else ""
            if delta:
                subscriber({"delta": delta})
            if request.done:
                subscriber({"result": request.result()})
                with self._lock:
                    del self._subscribers[request]

    def _fail(self, message: str) -> None:
        with self._lock:
            failed, self._subscribers = self._subscribers, {}
            self.engine.reset()
        for subscriber, _ in failed.values():
            subscriber({"error": message})
