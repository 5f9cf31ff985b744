"""Fixtures: real registries (Debian's docker-registry) on 127.0.0.1, a bearer-token front,
stores and images the tests build themselves."""

from __future__ import annotations

import base64
import contextlib
import json
import random
import secrets
import shutil
import socket
import subprocess
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from provision.clock import FakeClock
from provision.oci.auth import Credentials, CredentialStore
from provision.oci.config import RegistryConfig
from provision.oci.imagebuild import LayerCompression, tar_layer_from_entries, write_image
from provision.oci.model import Platform, ResolvedImage
from provision.oci.registry import RegistryClient
from provision.oci.store import ImageStore
from provision.retry import RetryPolicy

USER, PASSWORD = "tester", "s3cret-pass"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bcrypt_hash(password: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt

        return crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))


@dataclass
class Registry:
    host: str  # 127.0.0.1:PORT
    root: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}"


def start_registry(tmp: Path, *, htpasswd: bool = False) -> Registry:
    if shutil.which("docker-registry") is None:
        pytest.fail(
            "docker-registry is not installed (apt-get install docker-registry, see scripts/setup.sh)"
        )
    port = free_port()
    storage = tmp / "storage"
    storage.mkdir(parents=True)
    auth = ""
    if htpasswd:
        (tmp / "htpasswd").write_text(f"{USER}:{bcrypt_hash(PASSWORD)}\n")
        auth = f"auth:\n  htpasswd:\n    realm: test\n    path: {tmp / 'htpasswd'}\n"
    config = tmp / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: error\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n  secret: {secrets.token_hex(8)}\n" + auth
    )
    log = open(tmp / "registry.log", "wb")  # noqa: SIM115 - lives as long as the process
    process = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=log, stderr=log)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("docker-registry exited: " + (tmp / "registry.log").read_text())
        try:
            requests.get(f"http://127.0.0.1:{port}/v2/", timeout=1)
            break
        except requests.ConnectionError:
            time.sleep(0.05)
    else:
        process.kill()
        raise RuntimeError("docker-registry did not start")
    return Registry(f"127.0.0.1:{port}", tmp, process)


def stop(registry: Registry) -> None:
    if registry.process is not None:
        registry.process.terminate()
        try:
            registry.process.wait(5)
        except subprocess.TimeoutExpired:
            registry.process.kill()


@contextlib.contextmanager
def tampered_blob(registry: Registry, digest: str) -> Iterator[None]:
    """The registry's stored copy of blob ``digest`` with its last byte flipped (its digest no
    longer matches), restored afterwards."""
    hexpart = digest.split(":")[1]
    data = (
        registry.root / "storage/docker/registry/v2/blobs/sha256" / hexpart[:2] / hexpart / "data"
    )
    original = data.read_bytes()
    data.write_bytes(original[:-1] + bytes([original[-1] ^ 0xFF]))
    try:
        yield
    finally:
        data.write_bytes(original)


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    reg = start_registry(tmp_path_factory.mktemp("registry"))
    yield reg
    stop(reg)


@pytest.fixture(scope="session")
def basic_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    reg = start_registry(tmp_path_factory.mktemp("basic-registry"), htpasswd=True)
    yield reg
    stop(reg)


class TokenFront:
    """A bearer-token registry front: /token issues tokens for basic credentials (or
    anonymously for pull when allowed); everything else is proxied to a real registry when
    the request carries a token whose scope covers it, else 401 with a Bearer challenge."""

    def __init__(self, upstream: str, *, anonymous_pull: bool) -> None:
        self.upstream = upstream
        self.anonymous_pull = anonymous_pull
        self.tokens: dict[str, set[str]] = {}
        self.token_requests: list[dict[str, list[str]]] = []
        front = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                if self.path.startswith("/token"):
                    front.issue(self)
                else:
                    front.proxy(self)

            do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    @staticmethod
    def _reply(
        handler: BaseHTTPRequestHandler,
        status: int,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
    ) -> None:
        handler.send_response(status)
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(body)

    def issue(self, handler: BaseHTTPRequestHandler) -> None:
        query = parse_qs(urlsplit(handler.path).query)
        self.token_requests.append(query)
        auth = handler.headers.get("Authorization", "")
        good = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        if auth and auth != good:
            self._reply(handler, 401, b'{"details":"bad credentials"}')
            return
        granted: set[str] = set()
        for scope in query.get("scope", []):
            kind, _, rest = scope.partition(":")
            repo, _, actions = rest.rpartition(":")
            for action in actions.split(","):
                if auth or (self.anonymous_pull and action == "pull"):
                    granted.add(f"{repo}:{action}")
        token = secrets.token_hex(16)
        self.tokens[token] = granted
        body = json.dumps({"token": token, "expires_in": 300}).encode()
        self._reply(handler, 200, body, {"Content-Type": "application/json"})

    def proxy(self, handler: BaseHTTPRequestHandler) -> None:
        path = urlsplit(handler.path).path
        parts = path.split("/")
        repo, action = "", "pull"
        for marker in ("manifests", "blobs", "tags"):
            if marker in parts[2:]:
                repo = "/".join(parts[2 : parts.index(marker, 2)])
        if handler.command in ("POST", "PUT", "PATCH", "DELETE"):
            action = "push"
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        auth = handler.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else ""
        allowed = path == "/v2/" and token in self.tokens
        if repo and token in self.tokens and f"{repo}:{action}" in self.tokens[token]:
            allowed = True
        if not allowed:
            scope = f',scope="repository:{repo}:{action}"' if repo else ""
            challenge = f'Bearer realm="http://{self.host}/token",service="test-registry"{scope}'
            self._reply(
                handler,
                401,
                b'{"errors":[{"code":"UNAUTHORIZED"}]}',
                {"WWW-Authenticate": challenge, "Content-Type": "application/json"},
            )
            return
        headers = {
            k: v
            for k, v in handler.headers.items()
            if k.lower() not in ("authorization", "content-length", "connection")
        }
        response = requests.request(
            handler.command,
            f"http://{self.upstream}{handler.path}",
            headers=headers,
            data=body,
            allow_redirects=False,
            timeout=30,
        )
        out = {
            k: v
            for k, v in response.headers.items()
            if k.lower() not in ("content-length", "transfer-encoding", "connection")
        }
        self._reply(handler, response.status_code, response.content, out)


@pytest.fixture(scope="session")
def token_front(registry: Registry) -> Iterator[TokenFront]:
    front = TokenFront(registry.host, anonymous_pull=True)
    yield front
    front.close()


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "store")


def make_client(
    credentials: dict[str, Credentials] | None = None,
    *,
    clock: FakeClock | None = None,
    attempts: int = 5,
    parallel: int | None = None,
    **config: object,
) -> RegistryClient:
    return RegistryClient(
        config=RegistryConfig(**config),  # type: ignore[arg-type]
        credentials=CredentialStore.from_mapping(credentials or {}),
        retry=RetryPolicy(attempts=attempts, total=120.0, clock=clock or FakeClock()),
        parallel=parallel,
    )


@pytest.fixture
def client() -> RegistryClient:
    return make_client()


def make_image(
    store: ImageStore,
    name: str | None,
    files: dict[str, bytes],
    platform: Platform | None = None,
    created: int = 0,
) -> ResolvedImage:
    entries: list[tuple[str, bytes | str | None]] = []
    dirs: set[str] = set()
    for path in sorted(files):
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in dirs:
                dirs.add(d)
                entries.append((d, None))
        entries.append((path, files[path]))
    layer = tar_layer_from_entries(entries)
    return write_image(
        store,
        name,
        [layer],
        {"Cmd": ["/bin/sh"], "Env": ["A=1"]},
        platform=platform,
        created=created,
    )


@dataclass
class Seen:
    method: str
    path: str
    range: str | None
    status: int
    sent: int = 0


class FaultyFront:
    """A wire-level front of a real registry that misbehaves on purpose: scripted transient
    answers (status + Retry-After), blob bodies cut after N bytes, Range headers dropped
    (a registry without range support), a delay on blob GETs; it logs every request and
    counts blob GETs in flight."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.log: list[Seen] = []
        self.transient: list[tuple[str, int, str]] = []  # (path part, status, Retry-After)
        # blob digest (or manifest reference) -> bytes each next GET sends before it is cut
        self.cut_after: dict[str, list[int]] = {}
        self.strip_range = False
        self.blob_delay = 0.0
        self.inflight = self.max_inflight = 0
        self._lock = threading.Lock()
        front = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                front.handle(self)

            do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def blob_gets(self, digest: str) -> list[Seen]:
        return [s for s in self.log if s.method == "GET" and s.path.endswith("/blobs/" + digest)]

    def _scripted(self, path: str) -> tuple[int, str] | None:
        with self._lock:
            for position, (part, status, retry_after) in enumerate(self.transient):
                if part in path:
                    del self.transient[position]
                    return status, retry_after
        return None

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        path = handler.path
        seen = Seen(handler.command, urlsplit(path).path, handler.headers.get("Range"), 0)
        with self._lock:
            self.log.append(seen)
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        scripted = self._scripted(path)
        if scripted is not None:
            seen.status = scripted[0]
            TokenFront._reply(
                handler,
                scripted[0],
                b'{"errors":[{"code":"TOOMANYREQUESTS"}]}',
                {"Retry-After": scripted[1], "Content-Type": "application/json"},
            )
            return
        is_blob_get = handler.command == "GET" and "/blobs/sha256:" in path
        headers = {
            k: v
            for k, v in handler.headers.items()
            if k.lower() not in ("content-length", "connection", "host")
            and not (self.strip_range and k.lower() == "range")
        }
        if is_blob_get:
            with self._lock:
                self.inflight += 1
                self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            if is_blob_get and self.blob_delay:
                time.sleep(self.blob_delay)
            self._forward(handler, seen, headers, body, path)
        finally:
            if is_blob_get:
                with self._lock:
                    self.inflight -= 1

    def _forward(
        self,
        handler: BaseHTTPRequestHandler,
        seen: Seen,
        headers: dict[str, str],
        body: bytes,
        path: str,
    ) -> None:
        response = requests.request(
            handler.command,
            f"http://{self.upstream}{path}",
            headers=headers,
            data=body,
            allow_redirects=False,
            stream=True,
            timeout=30,
        )
        seen.status = response.status_code
        digest = urlsplit(path).path.rsplit("/", 1)[-1]
        with self._lock:
            cuts = self.cut_after.get(digest) if handler.command == "GET" else None
            cut = cuts.pop(0) if cuts else None
        handler.send_response(response.status_code)
        for key, value in response.headers.items():
            if key.lower() not in ("transfer-encoding", "connection"):
                handler.send_header(key, value)
        handler.end_headers()
        if handler.command == "HEAD":
            return
        for chunk in response.raw.stream(64 * 1024, decode_content=False):
            if cut is not None and seen.sent + len(chunk) >= cut:
                handler.wfile.write(chunk[: cut - seen.sent])
                seen.sent = cut
                handler.wfile.flush()
                handler.close_connection = True
                handler.connection.shutdown(socket.SHUT_RDWR)
                return
            handler.wfile.write(chunk)
            seen.sent += len(chunk)


@pytest.fixture
def faulty_front(registry: Registry) -> Iterator[FaultyFront]:
    front = FaultyFront(registry.host)
    yield front
    front.close()


def make_layered_image(
    store: ImageStore,
    name: str,
    layers: int,
    size: int,
    seed: int,
    compression: LayerCompression = "none",
) -> ResolvedImage:
    """An image of ``layers`` layers, each one file of ``size`` random bytes."""
    rng = random.Random(seed)
    tars = [tar_layer_from_entries([(f"layer{i}.bin", rng.randbytes(size))]) for i in range(layers)]
    return write_image(store, name, tars, {"Cmd": ["/bin/sh"]}, compression=compression)
