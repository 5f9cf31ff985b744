"""A small HTTP/1.1 server on an asyncio event loop: strict request parsing with limits,
keep-alive, pipelining answered in order, and file bodies sent with ``sendfile``.

One event loop (in a thread of its own) serves every connection, so a thousand machines
booting at once cost a thousand sockets, not a thousand threads; a slow or silent client holds
only its own connection. What is refused, before any handler sees it (the connection is then
closed):

- a request line that is not ``METHOD SP /TARGET SP HTTP/1.x`` (origin-form targets only,
  visible ASCII), a header line that is not ``name: value`` (no space before the colon, no
  folded lines), a bare CR or LF, a control character, a missing or repeated ``Host`` (HTTP/1.1),
  a repeated or non-numeric ``Content-Length``, any ``Transfer-Encoding``: 400;
- a request line longer than ``Limits.request_line``: 414; a head longer than ``Limits.head``
  or with more than ``Limits.headers`` fields: 431; a body longer than ``Limits.body``: 413;
- an HTTP version other than 1.0 and 1.1: 505.

A request's head must arrive within ``Limits.head_timeout`` seconds of its first byte, and an
idle keep-alive connection is closed after ``Limits.idle_timeout``; a file body must be taken
at ``Limits.send_rate`` bytes a second at least (after ``Limits.send_grace`` seconds), or the
connection is closed (a client that stops reading holds it no longer). A handler returns a
``Response`` (written at once) or an awaitable of one; a response with a ``FileBody`` is sent
with ``loop.sendfile`` (the kernel copies the file to the socket), and the requests pipelined
behind it wait their turn.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import email.utils
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path

log = logging.getLogger("provision.serve")

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_REQUEST_LINE = re.compile(rf"({_TOKEN}) (/[\x21-\x7e]*) HTTP/(\d)\.(\d)")
_FIELD = re.compile(rf"({_TOKEN}):[ \t]*(.*?)[ \t]*")
_CONTROLS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # all but HTAB, CR and LF
_SINGLE = ("host", "content-length", "authorization")
_SERVER = "Server: provision-serve\r\n"
_STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n{_SERVER}" for s in HTTPStatus}


@dataclass(frozen=True)
class Limits:
    request_line: int = 8192
    head: int = 32768  # the request line and every header line
    headers: int = 64
    body: int = 65536
    pipelined: int = 32  # requests parsed ahead of their answers before reading pauses
    head_timeout: float = 20.0
    idle_timeout: float = 75.0
    send_rate: int = 65536  # bytes a second a file body must be taken at, at least
    send_grace: float = 60.0  # seconds beyond count / send_rate


class HttpError(Exception):
    """A request refused before any handler saw it; the connection is closed after the answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class Request:
    """One parsed request: ``headers`` by lowercase name (repeated fields joined with ", ")."""

    __slots__ = ("method", "target", "version", "headers", "body", "keep_alive", "client", "local")

    def __init__(
        self, method: str, target: str, version: str, headers: dict[str, str], keep_alive: bool
    ) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.body = b""
        self.keep_alive = keep_alive
        self.client = ""
        self.local = ""


@dataclass(frozen=True)
class FileBody:
    """``count`` bytes of ``path`` from ``offset``, sent with sendfile."""

    path: Path
    offset: int
    count: int


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str | None = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()
    file: FileBody | None = None


class RequestParser:
    """Bytes in, requests out (``feed``); raises ``HttpError`` at the first refused request
    (the requests before it in the same bytes are kept in ``ready``)."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._buffer = b""
        self._scanned = 0  # where the search for the end of the head resumes
        self._waiting: Request | None = None  # a request whose body is still arriving
        self._body_length = 0
        self.ready: list[Request] = []

    @property
    def partial(self) -> bool:
        """Part of a request has arrived, not all of it."""
        return bool(self._buffer) or self._waiting is not None

    def feed(self, data: bytes) -> list[Request]:
        buffer = self._buffer + data if self._buffer else data
        ready = self.ready = []
        limits = self.limits
        while buffer:
            if self._waiting is not None:
                if len(buffer) < self._body_length:
                    break
                request = self._waiting
                request.body = buffer[: self._body_length]
                buffer = buffer[self._body_length :]
                self._waiting = None
                ready.append(request)
                continue
            end = buffer.find(b"\r\n\r\n", max(0, self._scanned - 3))
            if end < 0:
                self._scanned = len(buffer)
                first_line = buffer.find(b"\r\n")
                if (first_line < 0 and len(buffer) > limits.request_line) or (
                    first_line > limits.request_line
                ):
                    raise HttpError(414, "the request line is too long")
                if len(buffer) > limits.head:
                    raise HttpError(431, "the request's header fields are too large")
                break
            if end + 2 > limits.head:
                raise HttpError(431, "the request's header fields are too large")
            request, length = self._parse_head(buffer[:end].decode("latin-1"))
            buffer = buffer[end + 4 :]
            self._scanned = 0
            if length:
                self._waiting, self._body_length = request, length
            else:
                ready.append(request)
        self._buffer = buffer
        return ready

    def _parse_head(self, head: str) -> tuple[Request, int]:
        limits = self.limits
        lines = head.split("\r\n")
        breaks = len(lines) - 1
        if (
            head.count("\r") != breaks
            or head.count("\n") != breaks
            or _CONTROLS.search(head) is not None
        ):
            raise HttpError(400, "a control character, or a CR or LF alone, in the request")
        if len(lines[0]) > limits.request_line:
            raise HttpError(414, "the request line is too long")
        if len(lines) - 1 > limits.headers:
            raise HttpError(431, f"more than {limits.headers} header fields")
        match = _REQUEST_LINE.fullmatch(lines[0])
        if match is None:
            raise HttpError(400, "a malformed request line")
        method, target, major, minor = match.groups()
        if major != "1" or minor not in "01":
            raise HttpError(505, f"HTTP/{major}.{minor} is not served (HTTP/1.1 is)")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            field = _FIELD.fullmatch(line)
            if field is None:
                raise HttpError(400, "a malformed header field")
            name, value = field.groups()
            name = name.lower()
            if name in headers:
                if name in _SINGLE:
                    raise HttpError(400, f"{name} is given twice")
                headers[name] = f"{headers[name]}, {value}"
            else:
                headers[name] = value
        if minor == "1" and "host" not in headers:
            raise HttpError(400, "an HTTP/1.1 request needs a Host header")
        if "transfer-encoding" in headers:
            raise HttpError(400, "request bodies must have a Content-Length")
        length = 0
        if "content-length" in headers:
            text = headers["content-length"]
            if not text.isdigit() or not text.isascii():
                raise HttpError(400, "a malformed Content-Length")
            length = int(text)
            if length > limits.body:
                raise HttpError(413, f"request bodies are at most {limits.body} bytes")
        connection = headers.get("connection", "").lower()
        keep_alive = "close" not in connection if minor == "1" else "keep-alive" in connection
        return Request(method, target, f"1.{minor}", headers, keep_alive), length


class _Clock:
    """The Date header's text, made once a second."""

    def __init__(self) -> None:
        self._second = 0
        self._text = ""

    def date_line(self) -> str:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._text = f"Date: {email.utils.formatdate(now, usegmt=True)}\r\n"
        return self._text


Handler = Callable[[Request], Response | Awaitable[Response]]


class HttpConnection(asyncio.Protocol):
    """One client connection: requests parsed as bytes arrive, answered one at a time in
    order."""

    def __init__(self, service: HttpService) -> None:
        self.service = service
        self.parser = RequestParser(service.limits)
        self.pending: deque[Request | HttpError] = deque()
        self.transport: asyncio.Transport | None = None
        self.busy = False  # an answer is being awaited or a file sent
        self.closed = False
        self.reading = True
        self.writing = True
        self.head_started = False
        self.deadline = 0.0
        self.client = ""
        self.local = ""

    def waits_for_client(self) -> bool:
        """Nothing to answer, nothing being sent: the next move is the client's (the time-outs
        apply only then; a connection the server paused is not timed out)."""
        return not (self.busy or self.pending or not self.reading or not self.writing)

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        sock = transport.get_extra_info("sockname")
        self.client = str(peer[0]) if peer else ""
        self.local = f"{sock[0]}:{sock[1]}" if sock else ""
        self.deadline = time.monotonic() + self.service.limits.idle_timeout
        self.service.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pending.clear()
        self.service.connections.discard(self)

    def pause_writing(self) -> None:
        self.writing = False

    def resume_writing(self) -> None:
        self.writing = True
        self._answer_pending()

    def data_received(self, data: bytes) -> None:
        if self.closed or self.transport is None or self.transport.is_closing():
            return  # refused, or closing: nothing more is read
        try:
            ready: list[Request] = self.parser.feed(data)
            self.pending.extend(ready)
        except HttpError as refusal:
            ready = self.parser.ready
            self.pending.extend(ready)
            self.pending.append(refusal)
        limits = self.service.limits
        if self.parser.partial:
            # a request must be complete within head_timeout of its first byte
            if ready or not self.head_started:
                self.head_started = True
                self.deadline = time.monotonic() + limits.head_timeout
        else:
            self.head_started = False
            self.deadline = time.monotonic() + limits.idle_timeout
        self._answer_pending()
        if self.reading and len(self.pending) > limits.pipelined and self.transport:
            self.reading = False
            self.transport.pause_reading()

    # answering

    def _answer_pending(self) -> None:
        pending = self.pending
        while pending and not self.busy and self.writing and not self.closed:
            request = pending.popleft()
            if isinstance(request, HttpError):
                self._refuse(request)
                return
            request.client, request.local = self.client, self.local
            try:
                result = self.service.handler(request)
            except Exception as error:  # a handler's bug: logged, answered, not a dead server
                self._fail(request, error)
                return
            if isinstance(result, Response) and result.file is None:
                self._write(request, result)
            else:
                self.busy = True
                task = asyncio.get_running_loop().create_task(self._answer_later(request, result))
                self.service.tasks.add(task)
                task.add_done_callback(self.service.tasks.discard)
                return
        resume = not self.reading and len(pending) <= self.service.limits.pipelined // 2
        if resume and self.transport is not None and not self.closed:
            self.reading = True
            self.transport.resume_reading()
            limits = self.service.limits  # the client's time restarts: the wait was ours
            self.deadline = time.monotonic() + (
                limits.head_timeout if self.parser.partial else limits.idle_timeout
            )

    async def _answer_later(self, request: Request, result: Response | Awaitable[Response]) -> None:
        try:
            response = result if isinstance(result, Response) else await result
            if self.closed:
                return
            file = response.file
            sending = file is not None and request.method != "HEAD" and file.count > 0
            keep_alive = self._write(request, response, body_follows=sending)
            if file is not None and sending:
                await self._send_file(file)
            if not keep_alive:
                self._close()  # after the file (a Connection: close download)
        except (ConnectionError, TimeoutError) as error:
            log.debug("client %s went away: %s", self.client, error)
            self._close()
        except Exception as error:
            self._fail(request, error)
        finally:
            self.busy = False
        if not self.closed:
            self.deadline = time.monotonic() + self.service.limits.idle_timeout
            self._answer_pending()

    async def _send_file(self, body: FileBody) -> None:
        assert self.transport is not None
        limits = self.service.limits
        with open(body.path, "rb") as handle:
            try:
                sent = await asyncio.wait_for(
                    asyncio.get_running_loop().sendfile(
                        self.transport, handle, body.offset, body.count, fallback=False
                    ),
                    limits.send_grace + body.count / limits.send_rate,
                )
            except TimeoutError:
                log.info("%s: a client (%s) took it too slowly, closing", body.path, self.client)
                self._abort()
                return
        if sent != body.count:  # the file shrank under us: the length we promised is wrong
            log.warning("%s: sent %d of %d bytes, closing", body.path, sent, body.count)
            self._close()

    def _write(self, request: Request, response: Response, *, body_follows: bool = False) -> bool:
        """Write the head (and an in-memory body); close unless the connection is kept or a
        file body follows (the caller closes after it). Returns whether it is kept."""
        assert self.transport is not None
        keep_alive = request.keep_alive and not self.service.stopping
        file = response.file
        status = response.status
        head = (
            _STATUS_LINES.get(status) or f"HTTP/1.1 {status} \r\n{_SERVER}"
        ) + self.service.clock.date_line()
        head += f"Content-Length: {file.count if file is not None else len(response.body)}\r\n"
        if response.content_type is not None:
            head += f"Content-Type: {response.content_type}\r\n"
        for name, value in response.headers:
            head += f"{name}: {value}\r\n"
        if not keep_alive:
            head += "Connection: close\r\n"
        elif request.version == "1.0":
            head += "Connection: keep-alive\r\n"
        data = (head + "\r\n").encode("latin-1")
        if file is None and request.method != "HEAD":
            data += response.body
        self.transport.write(data)
        if not keep_alive and not body_follows:
            self._close()
        return keep_alive

    def _refuse(self, refusal: HttpError) -> None:
        log.debug("refused a request from %s: %d %s", self.client, refusal.status, refusal.reason)
        request = Request("GET", "/", "1.1", {}, keep_alive=False)
        self._write(request, Response(refusal.status, f"{refusal.reason}\n".encode()))

    def _fail(self, request: Request, error: Exception) -> None:
        log.error(
            "request %s from %s failed: %s: %s",
            request.target.partition("?")[0],
            self.client,
            type(error).__name__,
            error,
        )
        if self.closed or self.transport is None or self.transport.is_closing():
            return
        request.keep_alive = False
        self._write(request, Response(500, b"internal error\n"))

    def _abort(self) -> None:
        """Close at once, dropping what is buffered (the answer is cut short anyway)."""
        self.pending.clear()
        if self.transport is not None:
            self.transport.abort()

    def _close(self) -> None:
        self.pending.clear()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()  # after what is buffered is sent


class HttpService:
    """An HTTP server on its own event loop thread; ``server_address`` is where it listens.
    Raises OSError (from the constructor) when it cannot listen."""

    def __init__(
        self,
        handler: Handler,
        host: str = "127.0.0.1",
        port: int = 0,
        limits: Limits | None = None,
        backlog: int = 4096,
    ) -> None:
        self.handler = handler
        self.limits = limits or Limits()
        self.connections: set[HttpConnection] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.clock = _Clock()
        self.stopping = False
        self.loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        started: concurrent.futures.Future[tuple[str, int]] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._run, args=(host, port, backlog, started), daemon=True, name="http"
        )
        self._thread.start()
        address = started.result(timeout=30)  # the bind's OSError is raised here
        self.server_address: tuple[str, int] = address

    def _run(
        self,
        host: str,
        port: int,
        backlog: int,
        started: concurrent.futures.Future[tuple[str, int]],
    ) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self._server = self.loop.run_until_complete(
                self.loop.create_server(
                    lambda: HttpConnection(self), host, port, backlog=backlog, reuse_address=True
                )
            )
        except OSError as error:
            started.set_exception(error)
            self.loop.close()
            return
        sockname = self._server.sockets[0].getsockname()
        started.set_result((str(sockname[0]), int(sockname[1])))
        sweeper = self.loop.create_task(self._sweep())
        try:
            self.loop.run_forever()
        finally:
            sweeper.cancel()
            for task in (sweeper, *self.tasks):
                task.cancel()
            with contextlib.suppress(Exception):
                self.loop.run_until_complete(
                    asyncio.gather(sweeper, *self.tasks, return_exceptions=True)
                )
            self.loop.close()

    async def _sweep(self) -> None:
        """Close connections past their deadline (a head that never completes, an idle
        keep-alive), once a second."""
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for connection in list(self.connections):
                if connection.deadline < now and connection.waits_for_client():
                    log.debug("closing %s: timed out", connection.client)
                    if connection.transport is not None:
                        connection.transport.close()
                    self.connections.discard(connection)

    def shutdown(self) -> None:
        """Stop listening, close every connection, stop the loop's thread."""
        if self.loop.is_closed():
            return

        def stop() -> None:
            self.stopping = True
            if self._server is not None:
                self._server.close()
            for connection in list(self.connections):
                if connection.transport is not None:
                    connection.transport.abort()
            self.loop.stop()

        with contextlib.suppress(RuntimeError):  # the loop already closed
            self.loop.call_soon_threadsafe(stop)
        self._thread.join(timeout=10)
