"""A fake TP-Link cloud: the one server an emulated plug (hs100local.emulator.cloud)
trusts, because its certificate comes from the CA the plug pins.

As a script (e.g. in a network namespace, beside the emulator)::

    python tests/fakecloud.py --ca-cert CA.pem --ca-key CA-key.pem \\
        --listen 198.18.100.10:443 --listen 198.18.100.10:50443 [--log FILE]

It issues itself a server certificate from that CA (or takes ``--cert``/``--key``),
prints ``fakecloud listening on HOST:PORT, ...`` once every socket listens, and
writes one JSON line per event to ``--log`` (line-buffered; stdout without it) until
SIGTERM/SIGINT. Events: ``connect`` (TCP accepted), ``handshake`` (TLS completed:
``tls_version``, ``cipher``), ``handshake_failed`` (``reason``: the alert the client
sent, e.g. ``tlsv1_alert_unknown_ca``, or what went wrong), ``register`` (a
``helloCloud`` message, its ``params``), ``keepalive``, ``message`` (any other
method), ``bad_message`` (over the size limit or not a JSON object; the connection
is closed) and ``disconnect`` (``reason``). Each has ``time``, ``peer`` (the client's
address), ``peer_port`` and ``port`` (ours: 443 or 50443).

The wire format is the emulator's invented stand-in (no capture of the real one
exists): 4-byte big-endian length + JSON object, each way. Every message is answered
with ``{"method": <its method>, "error_code": 0}``.

In tests, :class:`FakeCloud` is the same server in-process (threads, so it does not
depend on the test's event loop): ``FakeCloud(issue_server_cert(ca_pem, key_pem))
.start()``, then ``wait_for("register", 2)`` blocks until two registrations came (no
sleeping), ``drop()`` cuts every open connection, ``close()`` stops it. ``reply``
replaces the answer to a registration with raw bytes (sent inside TLS) to feed a
client garbage.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import signal
import socket
import ssl
import struct
import sys
import tempfile
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

#: largest message accepted (4-byte length + JSON), as the emulated plug's
MAX_MESSAGE = 16384
#: names in the issued certificate (the plug checks none: it sends no SNI)
CLOUD_NAMES = ("n-devs.tplinkcloud.com", "devs.tplinkcloud.com", "*.tplinkcloud.com")
#: plugs boot with their clock at 2000-01-01: a certificate valid from then
NOT_BEFORE = datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc)


def issue_server_cert(ca_cert_pem: bytes, ca_key_pem: bytes,
                      names: Sequence[str] = CLOUD_NAMES) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) for the cloud names, signed by the given CA. RSA,
    because the plug's old suites use RSA key exchange."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOT_BEFORE)
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def server_context(cert_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    """TLS 1.0 and up with the old suites (a 2015 plug must get through), our cert."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with tempfile.TemporaryDirectory() as tmp:  # load_cert_chain wants files
        cert_path, key_path = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
        cert_path.write_bytes(cert_pem)
        key_path.touch(0o600)
        key_path.write_bytes(key_pem)
        context.load_cert_chain(str(cert_path), str(key_path))
    return context


def _ack(method: Any) -> bytes:
    body = json.dumps({"method": method, "error_code": 0}).encode()
    return struct.pack(">I", len(body)) + body


class _BadMessage(Exception):
    pass


def _read_exactly(sock: ssl.SSLSocket, size: int) -> bytes | None:
    """``size`` bytes, or None at a clean end of stream before the first byte."""
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            if data:
                raise _BadMessage(f"stream ended inside a message ({len(data)}/{size} bytes)")
            return None
        data += chunk
    return bytes(data)


class FakeCloud:
    """TLS on each ``listen`` (host, port); one thread per listening socket and per
    connection. ``events`` holds every event (dicts, as logged)."""

    def __init__(
        self,
        certificate: tuple[bytes, bytes],
        listen: Sequence[tuple[str, int]] = (("127.0.0.1", 0),),
        *,
        log: TextIO | None = None,
        reply: bytes | None = None,
        handshake_timeout: float = 10.0,
        idle_timeout: float = 900.0,
    ) -> None:
        self.context = server_context(*certificate)
        self.listen = list(listen)
        self.log = log
        self.reply = reply
        self.handshake_timeout = handshake_timeout
        self.idle_timeout = idle_timeout
        self.bound: list[tuple[str, int]] = []
        self.events: list[dict[str, Any]] = []
        self._changed = threading.Condition()
        self._listeners: list[socket.socket] = []
        self._open: set[socket.socket] = set()
        self._dropped: set[socket.socket] = set()  # cut by drop(): their end is "dropped"
        self._threads: list[threading.Thread] = []
        self._closed = False

    # ---------------------------------------------------------- control

    def start(self) -> FakeCloud:
        for host, port in self.listen:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
                sock.listen(64)
            except OSError:
                sock.close()
                self.close()
                raise
            self._listeners.append(sock)
            self.bound.append((host, sock.getsockname()[1]))
        for sock, (_host, port) in zip(self._listeners, self.bound, strict=True):
            self._spawn(self._accept_loop, sock, port)
        return self

    def __enter__(self) -> FakeCloud:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def port(self) -> int:
        return self.bound[0][1]

    def drop(self) -> int:
        """Cut every open connection (as a cloud that drops a device); how many."""
        with self._changed:
            victims = list(self._open)
            self._dropped.update(victims)
        for sock in victims:
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)  # not SSLSocket's: no TLS
        return len(victims)

    def close(self) -> None:
        self._closed = True
        for sock in self._listeners:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
            sock.close()
        self.drop()
        for thread in list(self._threads):
            if thread is not threading.current_thread():
                thread.join(5)

    def wait_for(self, event: str, count: int = 1, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The events of kind ``event`` once there are ``count``; AssertionError after
        ``timeout`` (with what did come, for the test's message)."""
        def found() -> list[dict[str, Any]]:
            return [e for e in self.events if e["event"] == event]

        with self._changed:
            if not self._changed.wait_for(lambda: len(found()) >= count, timeout):
                raise AssertionError(f"{len(found())} {event} events in {timeout} s, "
                                     f"wanted {count}: {self.events}")
            return found()

    # ---------------------------------------------------------- serving

    def _spawn(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _record(self, event: str, peer: tuple[str, int], port: int, **details: Any) -> None:
        entry = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(
                     timespec="milliseconds"),
                 "event": event, "peer": peer[0], "peer_port": peer[1], "port": port, **details}
        with self._changed:
            self.events.append(entry)
            if self.log is not None:
                self.log.write(json.dumps(entry) + "\n")
                self.log.flush()
            self._changed.notify_all()

    def _accept_loop(self, lsock: socket.socket, port: int) -> None:
        while not self._closed:
            try:
                sock, peer = lsock.accept()
            except OSError:
                return  # closed
            self._record("connect", peer, port)
            self._spawn(self._serve, sock, peer, port)

    def _serve(self, sock: socket.socket, peer: tuple[str, int], port: int) -> None:
        with self._changed:
            self._open.add(sock)
        current: socket.socket = sock
        try:
            sock.settimeout(self.handshake_timeout)
            try:
                tls = self.context.wrap_socket(sock, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                reason = getattr(exc, "reason", None) or type(exc).__name__
                self._record("handshake_failed", peer, port, reason=str(reason).lower())
                return
            with self._changed:
                self._open.discard(sock)
                self._open.add(tls)
            current = tls
            self._record("handshake", peer, port, tls_version=tls.version(),
                         cipher=(tls.cipher() or ("?",))[0])
            reason = self._converse(tls, peer, port)
            self._record("disconnect", peer, port, reason=reason)
        finally:
            with self._changed:
                self._open.discard(current)
                self._open.discard(sock)
                self._dropped.discard(current)
                self._dropped.discard(sock)
            current.close()

    def _converse(self, tls: ssl.SSLSocket, peer: tuple[str, int], port: int) -> str:
        """Read messages until the end; the reason it ended."""
        tls.settimeout(self.idle_timeout)
        try:
            while True:
                message = self._read_message(tls)
                if message is None:
                    return "dropped" if tls in self._dropped else "closed"
                method = message.get("method")
                kind = {"helloCloud": "register", "keepAlive": "keepalive"}.get(method, "message")
                self._record(kind, peer, port, method=method, params=message.get("params"))
                if kind == "register" and self.reply is not None:
                    tls.sendall(self.reply)
                else:
                    tls.sendall(_ack(method))
        except _BadMessage as exc:
            self._record("bad_message", peer, port, reason=str(exc))
            return "bad_message"
        except TimeoutError:
            return "idle"
        except (ssl.SSLError, OSError) as exc:
            if tls in self._dropped:
                return "dropped"
            return str(getattr(exc, "reason", None) or type(exc).__name__).lower()

    @staticmethod
    def _read_message(tls: ssl.SSLSocket) -> dict[str, Any] | None:
        head = _read_exactly(tls, 4)
        if head is None:
            return None
        (size,) = struct.unpack(">I", head)
        if size > MAX_MESSAGE:
            raise _BadMessage(f"announced {size} bytes (limit {MAX_MESSAGE})")
        body = _read_exactly(tls, size) or b""
        try:
            message = json.loads(body)
        except ValueError:
            message = None
        if not isinstance(message, dict):
            raise _BadMessage("not a JSON object")
        return message


# ------------------------------------------------------------------ script


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"want HOST:PORT, not {text!r}")
    return host, int(port)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A fake TP-Link cloud for emulated plugs.")
    parser.add_argument("--ca-cert", type=Path, help="the CA the plug pins (PEM)")
    parser.add_argument("--ca-key", type=Path, help="its private key: issue a server cert")
    parser.add_argument("--cert", type=Path, help="a ready server certificate (PEM)")
    parser.add_argument("--key", type=Path, help="its private key (PEM)")
    parser.add_argument("--listen", type=_host_port, action="append", required=True,
                        metavar="HOST:PORT", help="repeatable, e.g. 198.18.100.10:443")
    parser.add_argument("--log", type=Path, help="JSON lines here (default: stdout)")
    parser.add_argument("--idle-timeout", type=float, default=900.0,
                        help="close a connection silent this long (s, default 900)")
    args = parser.parse_args(argv)
    if args.cert and args.key:
        certificate = (args.cert.read_bytes(), args.key.read_bytes())
    elif args.ca_cert and args.ca_key:
        certificate = issue_server_cert(args.ca_cert.read_bytes(), args.ca_key.read_bytes())
    else:
        parser.error("give --ca-cert and --ca-key (to issue a certificate) or --cert and --key")
    log = open(args.log, "a", buffering=1) if args.log else sys.stdout  # noqa: SIM115
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    cloud = FakeCloud(certificate, args.listen, log=log, idle_timeout=args.idle_timeout).start()
    try:
        print("fakecloud listening on " + ", ".join(f"{h}:{p}" for h, p in cloud.bound),
              flush=True)
        stop.wait()
    finally:
        cloud.close()
        if log is not sys.stdout:
            log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
