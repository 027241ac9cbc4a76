"""Helpers for the cloud listener tests: sinks a test can wait on, ClientHellos made by
Python's own TLS stack, a hand-driven TLS client, ``openssl s_client``.

The hellos come from ``ssl.MemoryBIO``: a real OpenSSL client writes them, and the
test decides how they reach the socket (in one piece, a byte at a time, half).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import threading
import time
import warnings
from typing import Any

import prockit
from servicekit import Sink

from hs100local.tls.hello import ClientHello, parse_client_hello

Event = tuple[str, str | None, dict[str, Any]]


class WaitingSink(Sink):
    """A :class:`Sink` (no ``at``) whose events and counts a test thread can wait for."""

    def __init__(self) -> None:
        super().__init__()
        self._changed = threading.Condition()

    def record(self, kind: str, client: str | None, details: dict[str, Any]) -> None:
        with self._changed:
            super().record(kind, client, details)
            self._changed.notify_all()

    def count(self, kind: str, key: str, n: int = 1, *, client: str | None = None) -> None:
        with self._changed:
            super().count(kind, key, n, client=client)
            self._changed.notify_all()

    def wait_events(self, n: int, timeout: float = 10.0) -> list[Event]:
        """The events once there are at least ``n``; fails after ``timeout``."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.events) >= n, timeout):
                raise AssertionError(f"{len(self.events)} events after {timeout} s, "
                                     f"expected {n}: {self.events}")
            return list(self.events)

    def wait_event(self, timeout: float = 10.0) -> dict[str, Any]:
        """The details of the only event (fails if more than one came)."""
        events = self.wait_events(1, timeout)
        assert len(events) == 1, events
        kind, _client, details = events[0]
        assert kind == "tls"
        return details

    def wait_count(self, key: str, n: int, timeout: float = 10.0) -> None:
        with self._changed:
            if not self._changed.wait_for(
                    lambda: self.counts.get(("tls", key, "127.0.0.1"), 0) >= n, timeout):
                raise AssertionError(f"tls/{key} counted {self.counts} after {timeout} s")


class TimedSink(WaitingSink):
    """Also takes ``at`` (like the EventStore) and notes it with the recording time."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[tuple[float | None, float]] = []  # (at, when record was called)

    def record(self, kind: str, client: str | None, details: dict[str, Any], *,
               at: float | None = None) -> None:
        self.times.append((at, time.time()))
        super().record(kind, client, details)


def insecure_context(**versions: ssl.TLSVersion) -> ssl.SSLContext:
    """A client context that checks nothing (so it completes against our listener);
    ``minimum_version``/``maximum_version`` as keywords; TLS 1.0 allowed and old
    suites enabled when asked for (plug-like)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    _versions(context, **versions)
    return context


def _versions(context: ssl.SSLContext, **versions: ssl.TLSVersion) -> None:
    with warnings.catch_warnings():  # TLS 1.0 is deprecated; the plug speaks it
        warnings.simplefilter("ignore", DeprecationWarning)
        for name, value in versions.items():
            setattr(context, name, value)
    if versions.get("maximum_version", ssl.TLSVersion.TLSv1_3) < ssl.TLSVersion.TLSv1_2:
        context.set_ciphers("AES128-SHA:@SECLEVEL=0")


def pinned_context(ca_pem: bytes, **versions: ssl.TLSVersion) -> ssl.SSLContext:
    """A client that trusts only ``ca_pem``, as a plug trusts only TP-Link's CA."""
    context = ssl.create_default_context(cadata=ca_pem.decode("ascii"))
    _versions(context, **versions)
    return context


class BioClient:
    """A TLS client whose bytes the test carries: :meth:`hello` is the first flight,
    :meth:`finish` sends it (or what is left of it) and completes the handshake."""

    def __init__(self, context: ssl.SSLContext | None = None,
                 server_hostname: str | None = None) -> None:
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = (context or insecure_context()).wrap_bio(
            self.incoming, self.outgoing, server_hostname=server_hostname)
        with contextlib.suppress(ssl.SSLWantReadError):  # it waits for the server
            self.tls.do_handshake()
        self.hello = self.outgoing.read()

    def finish(self, sock: socket.socket) -> None:
        """Drive the handshake over ``sock`` (the hello already sent) to its end; if
        it fails here, the alert is sent before the error is raised (as a plug does)."""
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                pending = self.outgoing.read()
                if pending:
                    sock.sendall(pending)
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("server closed during the handshake") from None
                self.incoming.write(data)
            except ssl.SSLError:
                sock.sendall(self.outgoing.read())
                raise
        pending = self.outgoing.read()
        if pending:
            sock.sendall(pending)

    def send(self, sock: socket.socket, data: bytes) -> None:
        self.tls.write(data)
        sock.sendall(self.outgoing.read())


def hello_bytes(server_hostname: str | None = None, **versions: ssl.TLSVersion) -> bytes:
    return BioClient(insecure_context(**versions), server_hostname).hello


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def connect_and_read(port: int) -> bytes | str:
    """Connect and read to the end without sending: the bytes or "reset" (a listener
    that resets at accept may do so before ``connect`` has even returned)."""
    try:
        sock = connect(port)
    except ConnectionResetError:
        return "reset"
    with sock:
        return read_to_end(sock)


def read_to_end(sock: socket.socket) -> bytes | str:
    """Everything the server sends until it closes: the bytes, or "reset"."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        return "reset"
    return data


def s_client(port: int, *args: str, data: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    """``openssl s_client`` to 127.0.0.1:port; ``data`` on stdin, then EOF (it closes)."""
    return prockit.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", *args],
                       input=data, capture_output=True, timeout=30)


def capture_hello(*args: str) -> ClientHello:
    """The ClientHello ``openssl s_client *args`` sends, read by a bare TCP server."""
    server = socket.create_server(("127.0.0.1", 0))
    try:
        port = server.getsockname()[1]
        with prockit.running(  # stopped on the way out, also when reading the hello failed
            ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ) as client:
            server.settimeout(10)
            conn, _ = server.accept()
            with conn:
                conn.settimeout(10)
                data = b""
                while True:
                    chunk = conn.recv(65536)
                    assert chunk, f"s_client closed after {len(data)} bytes"
                    data += chunk
                    hello = parse_client_hello(data)
                    if isinstance(hello, ClientHello):
                        break
            client.wait(10)
    finally:
        server.close()
    return hello
