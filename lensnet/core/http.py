"""HTTP plumbing shared by the model server (`lensnet.serve`) and the dashboard: the listening socket,
uvicorn, a test thread, bounded request bodies, JSON parsing that never raises past a 400, and the guard that
keeps a server a user starts on their machine theirs (as Jupyter does). Nothing here imports TensorFlow, so a
page that serves no model (the dashboard) starts in a fraction of a second.

The guard (an ASGI middleware, `Guard`):
- Host: the request's Host header must name the bound address (for a loopback bind: 127.0.0.1, localhost,
  ::1) or a name given with --allow-host; otherwise 421. A web page on another domain that rebinds its DNS to
  127.0.0.1 sends its own name as Host, so it cannot read the server's answers.
- State-changing requests (POST, PUT, PATCH, DELETE) need the per-launch token (header `X-Lensnet-Token`, or
  the cookie the start-up URL sets) and an Origin (or, without one, a Referer) of this very server;
  otherwise 403. A page on another origin cannot send the custom header without a CORS preflight, which is
  never answered, and never learns the token.
- A non-loopback bind (`--host 0.0.0.0`, a LAN address) needs the token on every request: the start-up URL
  carries it (`?token=...`), which sets an HttpOnly SameSite=Strict cookie for the pages and files after it.
Every refusal is a one-line JSON `{"error": ...}` with a 4xx status.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import json
import secrets
import socket
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from lensnet.core.errors import LensnetError

_DRAIN_BYTES = 64 << 20  # discarded past the limit so the client can read the 413
TOKEN_HEADER = "x-lensnet-token"
TOKEN_COOKIE = "lensnet_token"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class ClientError(Exception):
    """A bad request: answered with `status` and {"error": message}."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def one_line(exc: BaseException | str) -> str:
    return " ".join(str(exc).split())[:200]


def _reject_constant(token: str) -> None:
    raise ValueError(f"{token} is not valid JSON (send finite numbers)")


def parse_json(body: bytes) -> Any:
    """JSON from a request body; invalid UTF-8, NaN/Infinity, nesting too deep for Python are a 400."""
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ClientError(400, f"malformed JSON: {one_line(exc)}") from None


async def read_body(request: Any, limit: int) -> bytes:
    """The request body, refused with 413 once it passes `limit` bytes; never more than `limit` is kept.

    The rest of an oversized body is read and discarded (up to `_DRAIN_BYTES` more) before the
    413 goes out: closing a connection with unread data makes the kernel reset it, and the
    client would see "connection reset" instead of the JSON error. Past that the connection
    is dropped.
    """
    declared = request.headers.get("content-length")
    if declared is not None and not declared.isdigit():
        raise ClientError(400, "invalid Content-Length")
    if declared is not None and int(declared) > limit + _DRAIN_BYTES:
        raise ClientError(413, f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        elif size > limit + _DRAIN_BYTES:
            break
    if size > limit:
        raise ClientError(413, f"request body exceeds the limit of {limit} bytes")
    return b"".join(chunks)


# ---- who may talk to the server --------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def is_wildcard(host: str) -> bool:
    return host.strip("[]") in ("0.0.0.0", "::", "")


def _host_name(value: str) -> str:
    """The host part of a Host header or netloc ("[::1]:8050" -> "::1", "Example:80" -> "example")."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


@dataclass
class Access:
    """Who may use a server bound to `host`: the names its Host header may carry and the launch token."""

    host: str
    port: int
    allow_hosts: Sequence[str] = ()
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    require_token: bool | None = None  # None: only for a non-loopback bind

    def __post_init__(self) -> None:
        if self.require_token is None:
            self.require_token = not is_loopback(self.host)
        names = {_host_name(h) for h in self.allow_hosts}
        if is_loopback(self.host):
            names |= {"127.0.0.1", "localhost", "::1"}
        if not is_wildcard(self.host):
            names.add(_host_name(self.host))
        # A wildcard bind answers on every address the machine has: without --allow-host the Host is not
        # checked (the token required on every request keeps a rebinding page out: it never has it).
        self.names = None if is_wildcard(self.host) and not self.allow_hosts else names

    def host_ok(self, header: str | None) -> bool:
        if self.names is None:
            return True
        return header is not None and _host_name(header) in self.names

    def url(self, path: str = "/") -> str:
        shown = "127.0.0.1" if is_wildcard(self.host) else self.host
        shown = f"[{shown}]" if ":" in shown else shown
        query = f"?token={self.token}" if self.require_token else ""
        return f"http://{shown}:{self.port}{path}{query}"

    def token_ok(self, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(presented.encode(), self.token.encode())


def network_warning(host: str, what: str) -> str | None:
    """The warning a non-loopback bind prints (None for a loopback one)."""
    if is_loopback(host):
        return None
    return (f"warning: {what} listens on {host}: anyone who can reach this machine on the network can connect; "
            "bind 127.0.0.1 and use an SSH tunnel unless you mean it")


def _header(scope: dict, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


def _cookie(scope: dict, name: str) -> str | None:
    raw = _header(scope, b"cookie")
    if not raw:
        return None
    for part in raw.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


class Guard:
    """ASGI middleware enforcing `Access` (see the module doc) in front of `app`."""

    def __init__(self, app: Any, access: Access, csrf: bool = True) -> None:
        self.app, self.access, self.csrf = app, access, csrf

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal, set_cookie = self.check(scope)
        if refusal is not None:
            await _send_json(send, refusal.status, {"error": refusal.message})
            return
        if not set_cookie:
            await self.app(scope, receive, send)
            return

        async def send_with_cookie(message: dict) -> None:
            if message["type"] == "http.response.start":
                cookie = f"{TOKEN_COOKIE}={self.access.token}; HttpOnly; SameSite=Strict; Path=/"
                message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", cookie.encode())]}
            await send(message)

        await self.app(scope, receive, send_with_cookie)

    def check(self, scope: dict) -> tuple[ClientError | None, bool]:
        """(the refusal or None, whether to set the token cookie)."""
        access = self.access
        host = _header(scope, b"host")
        if not access.host_ok(host):
            return ClientError(421, f"Host {host!r} is not this server's address; start it with --allow-host "
                                    "NAME to reach it under another name"), False
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        from_query = (query.get("token") or [None])[0]
        presented = _header(scope, TOKEN_HEADER.encode()) or from_query or _cookie(scope, TOKEN_COOKIE)
        has_token = access.token_ok(presented)
        if access.require_token and not has_token:
            return ClientError(403, "this server needs its token: open the URL it printed at start-up "
                                    "(…?token=...)"), False
        if self.csrf and scope["method"] in UNSAFE_METHODS:
            origin = _header(scope, b"origin") or _header(scope, b"referer")
            if origin is None:
                return ClientError(403, f"{scope['method']} needs an Origin or Referer header of this server"), False
            parts = urlsplit(origin)
            if parts.scheme != "http" or host is None or parts.netloc.lower() != host.strip().lower():
                return ClientError(403, f"cross-origin {scope['method']} refused (Origin {one_line(origin)!r} is not "
                                        "this server)"), False
            if not has_token:
                return ClientError(403, f"{scope['method']} needs this launch's token ({TOKEN_HEADER} header)"), False
        return None, has_token and from_query is not None


async def _send_json(send: Any, status: int, body: dict) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


def json_errors() -> dict:
    """Starlette exception handlers turning its own errors (404 route, 405 method) into one-line JSON."""
    from starlette.exceptions import HTTPException
    from starlette.responses import JSONResponse

    async def http_error(request: Any, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": one_line(str(exc.detail))}, status_code=exc.status_code)

    return {HTTPException: http_error}


# ---- sockets and uvicorn ---------------------------------------------------------------------------------


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


def warn(message: str | None) -> None:
    if message:
        print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def app_in_thread(app: Any, host: str = "127.0.0.1", sock: socket.socket | None = None) -> Iterator[str]:
    """Run an ASGI `app` under uvicorn on a free local port (or `sock`) in a background thread; yields its
    base URL."""
    import time

    sock = sock or bind(host, 0)
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
