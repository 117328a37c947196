"""HTTP plumbing shared by the model server and the dashboard: a listening socket, uvicorn, a test thread.

Nothing here imports TensorFlow, so a page that serves no model (the dashboard) starts in a fraction of a second.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import Any

from lensnet.core.errors import LensnetError


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: a free one); failure is a one-line error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, not 0: asyncio only sets TCP_NODELAY on sockets that say they are TCP, and
    # without it every response waits ~40 ms for a delayed ACK (headers and body are two writes).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise LensnetError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    # Listening now, so connections queue from the moment the address is announced, before
    # uvicorn's loop starts accepting.
    sock.listen(2048)
    return sock


def uvicorn_server(app: Any, access_log: bool = False) -> Any:
    import uvicorn

    config = uvicorn.Config(
        app, log_level="warning", access_log=access_log, lifespan="on", http="h11", timeout_keep_alive=30
    )
    return uvicorn.Server(config)



@contextlib.contextmanager
def app_in_thread(app: Any, host: str = "127.0.0.1") -> Iterator[str]:
    """Run an ASGI `app` under uvicorn on a free local port in a background thread; yields its base URL."""
    import time

    sock = bind(host, 0)
    http = uvicorn_server(app)
    thread = threading.Thread(target=http.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not http.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("server thread did not start")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        http.should_exit = True
        thread.join(timeout=30)
        sock.close()
