"""An ASGI app served by uvicorn on a free loopback port, in a thread, for tests that talk HTTP to it."""

import contextlib
import socket
import threading
import time

import uvicorn


@contextlib.contextmanager
def serving(app, **config):
    """Yields (base URL, the uvicorn.Server); the server stops on exit (or earlier: server.should_exit)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical", **config))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    server.thread = thread
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.should_exit = True
        thread.join(10)
