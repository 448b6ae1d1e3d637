"""A small OpenAI-compatible server on loopback that replays scripted replies, for the openai teacher's tests.

Each request is matched to a record by the answer in its last user message; the record's script says
what each attempt gets: "ok" (the recorded annotation), an HTTP error status ("429", "500", ...), "timeout" (a reply
slower than the client waits), "garbage-body" (a 200 that is not JSON), or any other string (sent as
the reply's text, e.g. garbage content).
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ANSWER_MARK = "Answer to annotate:\n"


def answer_of(request: dict) -> str:
    return request["messages"][-1]["content"].split(ANSWER_MARK, 1)[1]


class ReplayServer:
    def __init__(self, recorded: dict[str, str], scripts: dict[str, list[str]] | None = None, delay: float = 0.0,
                 slow: float = 2.0, models_status: int = 200):
        self.recorded = recorded  # answer -> annotation
        self.scripts = scripts or {}  # answer -> what each attempt gets (then "ok")
        self.delay, self.slow, self.models_status = delay, slow, models_status
        self.log: list[tuple[str, str]] = []  # (answer, what it got), in order of arrival
        self.requests: list[dict] = []
        self.served = 0  # replies sent in full
        self.in_flight = self.max_in_flight = 0
        self._attempts: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def requested(self) -> list[str]:
        with self._lock:
            return [answer for answer, _ in self.log]

    def __enter__(self) -> ReplayServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _next(self, request: dict) -> str:
        answer = answer_of(request)
        with self._lock:
            attempt = self._attempts[answer]
            self._attempts[answer] += 1
            script = self.scripts.get(answer, [])
            what = script[attempt] if attempt < len(script) else "ok"
            self.log.append((answer, what))
            self.requests.append(request)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        return what

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _send(self, status: int, body: bytes, kind: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path.endswith("/models"):
                    body = {"object": "list", "data": [{"id": "recorded", "object": "model", "owned_by": "test"}]}
                    self._send(server.models_status, json.dumps(body).encode())
                else:
                    self._send(404, b'{"error": {"message": "not found"}}')

            def do_POST(self):
                request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                what = server._next(request)
                try:
                    time.sleep(server.slow if what == "timeout" else server.delay)
                    self._reply(request, what)
                    with server._lock:
                        server.served += 1
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up on a slow reply
                finally:
                    with server._lock:
                        server.in_flight -= 1

            def _reply(self, request: dict, what: str) -> None:
                if what in ("400", "401", "429", "500", "503"):
                    error = {"error": {"message": f"scripted {what}", "type": "test", "code": what}}
                    self._send(int(what), json.dumps(error).encode())
                    return
                if what == "garbage-body":
                    self._send(200, b"<html>upstream proxy error</html>", kind="text/html")
                    return
                text = server.recorded[answer_of(request)] if what in ("ok", "timeout") else what
                body = {"id": "cmpl-test", "object": "chat.completion", "created": 0, "model": request["model"],
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": text}}],
                        "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}}
                self._send(200, json.dumps(body).encode())

        return Handler
