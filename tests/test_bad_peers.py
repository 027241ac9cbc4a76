"""Bad input from the network: misbehaving plugs, garbage clients, random requests.

Four groups:

1. fake plugs that misbehave (close mid-reply, announce an absurd length, send
   garbage, never answer, answer err_code -1/-2) and a refused port, against both
   transports (blocking + ``run_sync``; asyncio + ``run_async``/``Plug``): the
   exception type and the retry policy;
2. the CLI (click's CliRunner and a real ``python -m hs100local`` subprocess)
   against the same fakes: exit codes and one-line stderr, plus usage errors;
3. the emulator survives garbage clients (TCP and UDP) and keeps serving;
4. a property test: ``EmulatedPlug.handle`` answers any request dict.

The fake plugs are small threaded servers on 127.0.0.1 with an ephemeral port.
They count the TCP connections they accept; stopping one wakes its accept loop with
a sentinel connection, and because the accept queue is FIFO, every connection a
client made before stop() is counted before the sentinel: the counts are exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any

import hypothesis.strategies as st
import prockit
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings

from hs100local import ops
from hs100local.blocking import BlockingTransport
from hs100local.cli import cli
from hs100local.device import Plug
from hs100local.emulator import MODELS, EmulatedPlug
from hs100local.emulator.server import EmulatorThread
from hs100local.errors import (
    ConnectionLostError,
    DeviceError,
    Hs100Error,
    PlugTimeoutError,
    ProtocolError,
    UnreachableError,
)
from hs100local.protocol import (
    HEADER,
    MAX_MESSAGE,
    FrameDecoder,
    decode_udp,
    decrypt,
    dumps,
    encode_tcp,
    encode_udp,
    encrypt,
)
from hs100local.transport import TcpTransport

HOST = "127.0.0.1"
SHORT = 0.3  # timeout for the plug that never answers
LONG = 5.0  # timeout for everything else: never reached when the code is right
SYSINFO = {"system": {"get_sysinfo": {}}}

# ============================================================== fake plugs

#: A responder maps one decrypted request to (bytes to send, close afterwards).
Responder = Callable[[bytes], tuple[bytes, bool]]


class FakePlug:
    """A threaded TCP server that answers each request frame with ``responder``.

    ``connections`` counts accepted connections and ``requests`` the request frames
    read; both are final once the ``with`` block has exited (stop() joins every
    thread it started and closes every socket).
    """

    def __init__(self, responder: Responder) -> None:
        self.responder = responder
        self.connections = 0
        self.requests: list[bytes] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server((HOST, 0))
        self.port: int = self._listener.getsockname()[1]
        self.target = f"{HOST}:{self.port}"
        self._conns: list[socket.socket] = []
        self._handlers: list[threading.Thread] = []
        self._sentinel: Any = None
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True)

    def __enter__(self) -> FakePlug:
        self._acceptor.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _accept_loop(self) -> None:
        while True:
            conn, addr = self._listener.accept()
            if addr == self._sentinel:
                conn.close()
                return
            with self._lock:
                self.connections += 1
                self._conns.append(conn)
            handler = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._handlers.append(handler)
            handler.start()

    def _serve(self, conn: socket.socket) -> None:
        decoder = FrameDecoder()
        try:
            while True:
                message = decoder.next_message()
                if message is None:
                    data = conn.recv(65536)
                    if not data:
                        return
                    decoder.feed(data)
                    continue
                with self._lock:
                    self.requests.append(message)
                reply, close = self.responder(message)
                if reply:
                    conn.sendall(reply)
                if close:
                    conn.shutdown(socket.SHUT_RDWR)  # FIN after the data; closed in stop()
                    return
        except OSError:
            return  # the client went away, or stop() shut the socket down

    def stop(self) -> None:
        with socket.socket() as wake:
            wake.bind((HOST, 0))
            self._sentinel = wake.getsockname()
            wake.connect((HOST, self.port))
            self._acceptor.join(5)
        self._listener.close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)  # wakes a handler blocked in recv()
        for handler in self._handlers:
            handler.join(5)
        for conn in conns:
            conn.close()
        assert not self._acceptor.is_alive(), "fake plug accept loop did not stop"
        assert not any(h.is_alive() for h in self._handlers), "fake plug handler did not stop"


def _not_json(body: bytes) -> bool:
    try:
        json.loads(decrypt(body).decode("utf-8", errors="replace"))
    except ValueError:
        return True
    return False


_GARBAGE = random.Random(0x9999).randbytes(48)
assert _not_json(_GARBAGE)  # the seed is fixed, so this holds once and for all

RESPONDERS: dict[str, Responder] = {
    # (a) announce 100 bytes, send 10, close
    "partial": lambda _m: (HEADER.pack(100) + encrypt(b'{"system":')[:10], True),
    # (b) announce 1 MiB: far over the 64 KiB cap (connection left open)
    "oversize": lambda _m: (HEADER.pack(0x00100000) + b"\x00" * 16, False),
    # (c) a correct length prefix, then random bytes that do not decrypt to JSON
    "garbage": lambda _m: (HEADER.pack(len(_GARBAGE)) + _GARBAGE, False),
    # (d) accept, read the request, never answer
    "silent": lambda _m: (b"", False),
    # (e) the firmware's two error levels
    "module_err": lambda _m: (
        encode_tcp(dumps({"system": {"err_code": -1, "err_msg": "module not support"}})),
        False,
    ),
    "method_err": lambda _m: (
        encode_tcp(
            dumps({"system": {"get_sysinfo": {"err_code": -2, "err_msg": "member not support"}}})
        ),
        False,
    ),
}


class RefusedPort:
    """(f) a port with nothing listening: bound, its number noted, closed."""

    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind((HOST, 0))
            self.port = s.getsockname()[1]
        self.target = f"{HOST}:{self.port}"
        self.connections = 0  # nothing can ever connect
        self.requests: list[bytes] = []

    def __enter__(self) -> RefusedPort:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass


def peer(scenario: str) -> FakePlug | RefusedPort:
    return RefusedPort() if scenario == "refused" else FakePlug(RESPONDERS[scenario])


# ============================================== 1. transports against fake plugs

#: scenario -> (exception type, err_code for DeviceError); retries are in RETRY_CASES
EXPECTED: dict[str, tuple[type[Hs100Error], int | None]] = {
    "partial": (ConnectionLostError, None),
    "oversize": (ProtocolError, None),
    "garbage": (ProtocolError, None),
    "silent": (PlugTimeoutError, None),
    "module_err": (DeviceError, -1),
    "method_err": (DeviceError, -2),
    "refused": (UnreachableError, None),
}


@pytest.fixture
def connect_attempts(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Count connection attempts client-side (the only way to see them for a refused port)."""
    attempts: list[tuple[str, int]] = []
    create_connection = socket.create_connection
    open_connection = asyncio.open_connection

    def counting_create_connection(address: Any, *args: Any, **kwargs: Any) -> socket.socket:
        attempts.append(tuple(address))
        return create_connection(address, *args, **kwargs)

    async def counting_open_connection(host: str, port: int, **kwargs: Any) -> Any:
        attempts.append((host, port))
        return await open_connection(host, port, **kwargs)

    monkeypatch.setattr(socket, "create_connection", counting_create_connection)
    monkeypatch.setattr(asyncio, "open_connection", counting_open_connection)
    return attempts


def run_client(kind: str, port: int, *, timeout: float, retries: int | None) -> Any:
    """get_sysinfo through one of the three client stacks; returns the SysInfo."""
    kw: dict[str, Any] = {"timeout": timeout}
    if retries is not None:
        kw["retries"] = retries
    if kind == "blocking":
        with BlockingTransport(HOST, port, **kw) as transport:
            return ops.run_sync(ops.sysinfo(), transport.query)

    async def transport_client() -> Any:
        async with TcpTransport(HOST, port, **kw) as transport:
            return await ops.run_async(ops.sysinfo(), transport.query)

    async def plug_client() -> Any:
        async with Plug(HOST, port, **kw) as plug:
            return await plug.sysinfo()

    return asyncio.run(transport_client() if kind == "asyncio" else plug_client())


# (scenario, retries passed to the client or None for the default, connections expected)
RETRY_CASES = [
    ("partial", None, 2),  # retried once by default
    ("partial", 0, 1),
    ("partial", 3, 4),
    ("silent", None, 2),
    ("silent", 0, 1),
    ("oversize", None, 1),  # protocol errors are never retried
    ("oversize", 3, 1),
    ("garbage", None, 1),
    ("garbage", 3, 1),
    ("module_err", None, 1),
    ("method_err", None, 1),
    ("refused", None, 1),  # refused is never retried
    ("refused", 3, 1),
]


@pytest.mark.parametrize("kind", ["blocking", "asyncio", "plug"])
@pytest.mark.parametrize(
    ("scenario", "retries", "connections"),
    RETRY_CASES,
    ids=[f"{s}-retries={r}" for s, r, _c in RETRY_CASES],
)
def test_client_error_type_and_retries(
    kind: str,
    scenario: str,
    retries: int | None,
    connections: int,
    connect_attempts: list[tuple[str, int]],
) -> None:
    error_type, code = EXPECTED[scenario]
    timeout = SHORT if scenario == "silent" else LONG
    with peer(scenario) as fake, pytest.raises(error_type) as caught:
        run_client(kind, fake.port, timeout=timeout, retries=retries)
    # Exactly the type asked for, not a subclass or a sibling that happens to match.
    assert type(caught.value) is error_type
    assert caught.value.exit_code == (1 if error_type is DeviceError else 3)
    if code is not None:
        assert isinstance(caught.value, DeviceError)
        assert caught.value.code == code
        assert caught.value.module == "system"
        assert caught.value.method == (None if code == -1 else "get_sysinfo")
    assert connect_attempts == [(HOST, fake.port)] * connections
    assert fake.connections == (0 if scenario == "refused" else connections)
    if scenario in ("partial", "oversize", "garbage", "module_err", "method_err"):
        # The client only saw a reply after the fake had read its request: exact.
        assert len(fake.requests) == connections
        assert all(json.loads(r) == SYSINFO for r in fake.requests)


@pytest.mark.parametrize("kind", ["blocking", "asyncio"])
def test_raw_query_returns_error_replies_unchecked(kind: str) -> None:
    """``query`` is the unchecked layer: an err_code reply is data, not an exception."""
    module_level = {"system": {"err_code": -1, "err_msg": "module not support"}}
    with FakePlug(RESPONDERS["module_err"]) as fake:
        if kind == "blocking":
            with BlockingTransport(HOST, fake.port, timeout=LONG) as t:
                reply = t.query(SYSINFO)
        else:

            async def go() -> Any:
                async with TcpTransport(HOST, fake.port, timeout=LONG) as t:
                    return await t.query(SYSINFO)

            reply = asyncio.run(go())
    assert reply == module_level


@pytest.mark.parametrize("kind", ["blocking", "asyncio"])
def test_connection_survives_garbage_reply(kind: str) -> None:
    """After a reply that is not JSON the connection is still usable (one connection)."""
    replies = iter([HEADER.pack(len(_GARBAGE)) + _GARBAGE, encode_tcp(dumps({"ok": 1}))])
    with FakePlug(lambda _m: (next(replies), False)) as fake:
        if kind == "blocking":
            with BlockingTransport(HOST, fake.port, timeout=LONG) as t:
                with pytest.raises(ProtocolError):
                    t.query(SYSINFO)
                second = t.query(SYSINFO)
        else:

            async def go() -> Any:
                async with TcpTransport(HOST, fake.port, timeout=LONG) as t:
                    with pytest.raises(ProtocolError):
                        await t.query(SYSINFO)
                    return await t.query(SYSINFO)

            second = asyncio.run(go())
    assert second == {"ok": 1}
    assert fake.connections == 1
    assert len(fake.requests) == 2


# ====================================================== 2. the CLI against them

CLI_EXIT = {
    "partial": 3,
    "oversize": 3,
    "garbage": 3,
    "silent": 3,
    "refused": 3,
    "module_err": 1,
    "method_err": 1,
}


def _env_without_host() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "HS100LOCAL_HOST"}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def run_cli(how: str, args: list[str]) -> tuple[int, str, str]:
    """Run the CLI in-process (CliRunner) or as ``python -m hs100local``: (code, out, err)."""
    if how == "runner":
        result = CliRunner().invoke(cli, args, env={"HS100LOCAL_HOST": None})
        # A crash would also give a non-zero code: only a deliberate exit counts.
        assert result.exception is None or isinstance(result.exception, SystemExit), (
            result.exception,
            result.stderr,
        )
        return result.exit_code, result.stdout, result.stderr
    proc = prockit.run(
        [sys.executable, "-m", "hs100local", *args],
        capture_output=True,
        text=True,
        env=_env_without_host(),
        timeout=30,
        check=False,
    )
    return proc.returncode, proc.stdout, proc.stderr


def assert_one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("hs100local: error: "), stderr
    return lines[0]


@pytest.mark.parametrize("how", ["runner", "subprocess"])
@pytest.mark.parametrize("scenario", list(CLI_EXIT))
def test_cli_exit_codes_against_bad_plugs(how: str, scenario: str) -> None:
    timeout = SHORT if scenario == "silent" else LONG
    with peer(scenario) as fake:
        code, out, err = run_cli(how, ["-H", fake.target, "--timeout", str(timeout), "state"])
    assert code == CLI_EXIT[scenario], (out, err)
    assert out == ""
    line = assert_one_error_line(err)
    if scenario == "module_err":
        assert "-1" in line and "module not support" in line
    elif scenario == "method_err":
        assert "-2" in line and "member not support" in line
    elif scenario in ("partial", "silent", "refused"):
        assert fake.target in line
    # One retry for a connection lost half-way; a silent plug used up the --timeout
    # budget, which bounds the whole command, so there is no second try.
    assert fake.connections == {"partial": 2, "silent": 1, "refused": 0}.get(scenario, 1)
    if scenario == "silent":  # the message states the time really waited
        waited = float(line.rsplit("within ", 1)[1].split(" s")[0])
        assert SHORT - 0.1 <= waited < SHORT + 0.5, line


@pytest.mark.parametrize("how", ["runner", "subprocess"])
def test_cli_raw_error_reply(how: str) -> None:
    """``raw`` prints the plug's reply, then one error line, exit 1."""
    with FakePlug(RESPONDERS["method_err"]) as fake:
        code, out, err = run_cli(how, ["-H", fake.target, "raw", dumps(SYSINFO).decode()])
    assert code == 1
    assert json.loads(out)["system"]["get_sysinfo"]["err_code"] == -2
    line = assert_one_error_line(err)
    assert "-2" in line and "system.get_sysinfo" in line


def assert_usage_error(code: int, stderr: str) -> None:
    assert code == 2, stderr
    assert_one_error_line(stderr)


@pytest.mark.parametrize("how", ["runner", "subprocess"])
@pytest.mark.parametrize(
    "args",
    [
        ["state"],  # no -H and HS100LOCAL_HOST unset
        ["frobnicate"],
        ["reset"],
        ["raw", "not json"],
        ["--timeout", "0", "state"],
    ],
    ids=["no-host", "unknown-command", "reset-without-yes", "raw-not-json", "bad-timeout"],
)
def test_cli_usage_errors(how: str, args: list[str]) -> None:
    """Usage errors exit 2 before any byte reaches the plug."""
    with FakePlug(RESPONDERS["module_err"]) as fake:
        host = [] if args == ["state"] else ["-H", fake.target]
        code, _out, err = run_cli(how, [*host, *args])
    assert_usage_error(code, err)
    assert fake.connections == 0


@pytest.mark.parametrize("how", ["runner", "subprocess"])
@pytest.mark.parametrize("command", ["state", "on"])
def test_cli_child_on_single_plug_is_usage_error(
    how: str, command: str, emulator: EmulatorThread
) -> None:
    code, out, err = run_cli(how, ["-H", f"{HOST}:{emulator.port}", "-c", "9", command])
    assert_usage_error(code, err)
    assert "no outlets" in err
    assert out == ""
    assert emulator.call(lambda: emulator.server.plug.relay.on) is False  # nothing switched


# ========================================= 3. the emulator survives garbage clients


def _recv_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (EOF or reset)."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def _replies(data: bytes) -> list[Any]:
    decoder = FrameDecoder()
    decoder.feed(data)
    out = []
    while (message := decoder.next_message()) is not None:
        out.append(json.loads(message))
    assert decoder.pending == 0
    return out


def _rng_bytes_bad_header(seed: int) -> bytes:
    data = bytearray(random.Random(seed).randbytes(256))
    data[0] |= 0x01  # a length >= 16 MiB: never a valid header
    return bytes(data)


SET_ON = {"system": {"set_relay_state": {"state": 1}}}
BAD_PARAMS = {"system": {"set_relay_state": 5}}

# name -> (bytes to send, server closes?, replies expected, requests counted by the server)
TCP_GARBAGE: dict[str, tuple[bytes, bool, list[Any], int]] = {
    "random-bytes": (_rng_bytes_bad_header(1), True, [], 0),
    "http-request": (b"GET / HTTP/1.1\r\nHost: plug\r\n\r\n", True, [], 0),
    "truncated-header": (b"\x00\x01\x02", False, [], 0),
    "over-cap-length": (HEADER.pack(MAX_MESSAGE + 1) + b"x" * 32, True, [], 0),
    "max-length": (HEADER.pack(0xFFFFFFFF), True, [], 0),
    "empty-frame": (HEADER.pack(0), True, [], 1),
    "not-json": (encode_tcp(b"\x00\xffthis is not json {"), True, [], 1),
    "invalid-utf8": (encode_tcp(b"\xff\xfe\xfd\xfc"), True, [], 1),
    "json-array": (encode_tcp(b"[1,2]"), True, [], 1),
    "json-string": (encode_tcp(b'"system"'), True, [], 1),
    "json-null": (encode_tcp(b"null"), True, [], 1),
    "half-frame": (encode_tcp(dumps(SYSINFO))[:12], False, [], 0),
    "non-dict-params": (
        encode_tcp(dumps(BAD_PARAMS)),
        False,
        [{"system": {"set_relay_state": {"err_code": -3, "err_msg": "invalid argument"}}}],
        1,
    ),
    "non-dict-module": (
        encode_tcp(dumps({"system": [1, 2]})),
        False,
        [{"system": {"err_code": -1, "err_msg": "module not support"}}],
        1,
    ),
}


def _emu_requests(emu: EmulatorThread) -> int:
    return emu.call(lambda: emu.server.requests)


def _sysinfo(port: int) -> Any:
    with BlockingTransport(HOST, port, timeout=LONG, retries=0) as t:
        return ops.run_sync(ops.sysinfo(), t.query)


@pytest.mark.parametrize("case", list(TCP_GARBAGE))
def test_emulator_survives_tcp_garbage(
    case: str, emulator: EmulatorThread, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hs100local.emulator")
    data, server_closes, expected, counted = TCP_GARBAGE[case]
    port = emulator.port
    # A well-behaved client keeps its connection open across the whole test.
    with BlockingTransport(HOST, port, timeout=LONG, retries=0) as keeper:
        ops.run_sync(ops.set_relay(True), keeper.query)
        before = _emu_requests(emulator)

        with socket.create_connection((HOST, port), timeout=LONG) as bad:
            bad.sendall(data)
            if server_closes:
                received = _recv_until_closed(bad)
            elif expected:
                decoder = FrameDecoder()
                while (message := decoder.next_message()) is None:
                    chunk = bad.recv(65536)
                    assert chunk, "emulator closed instead of answering"
                    decoder.feed(chunk)
                received = encode_tcp(message)
            else:
                received = b""  # we hang up half-way; nothing to wait for
        replies = _replies(received)
        assert len(replies) == len(expected)
        assert replies == expected
        if server_closes:
            # It closed because it recognised bad input, not because it crashed.
            assert any("closing connection" in r.getMessage() for r in caplog.records)

        # The open connection and fresh ones still work, and the state is intact.
        info = ops.run_sync(ops.sysinfo(), keeper.query)
        assert info.relay_on is True
    assert _sysinfo(port).relay_on is True
    assert _emu_requests(emulator) - before == counted + 2  # + the two sysinfo queries
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]


def test_emulator_survives_garbage_in_sequence(emulator: EmulatorThread) -> None:
    """All the TCP garbage above, one after the other, on one emulator."""
    port = emulator.port
    with BlockingTransport(HOST, port, timeout=LONG, retries=0) as t:
        ops.run_sync(ops.set_relay(True), t.query)
    for data, _closes, _expected, _counted in TCP_GARBAGE.values():
        with socket.create_connection((HOST, port), timeout=LONG) as bad:
            bad.sendall(data)
        assert _sysinfo(port).relay_on is True


def _is_json_object(plain: bytes) -> bool:
    try:
        return isinstance(json.loads(plain.decode("utf-8", errors="replace")), dict)
    except ValueError:
        return False


def test_emulator_survives_random_udp(
    emulator: EmulatorThread, caplog: pytest.LogCaptureFixture
) -> None:
    """A few hundred random datagrams: dropped without a reply; probes still answered."""
    rng = random.Random(0xDA7A)
    port = emulator.port
    with BlockingTransport(HOST, port, timeout=LONG, retries=0) as t:
        ops.run_sync(ops.set_relay(True), t.query)
    before = _emu_requests(emulator)
    crafted = [b"", encrypt(b"[1,2]"), encrypt(b"null"), encrypt(b"{"), b"\x00" * 1400]
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.settimeout(LONG)
        udp.connect((HOST, port))
        for batch in range(12):
            # Batches of 25 keep the socket buffers far from full: nothing is dropped.
            for i in range(25):
                if batch == 0 and i < len(crafted):
                    datagram = crafted[i]
                else:
                    datagram = rng.randbytes(rng.randrange(0, 600))
                assert not _is_json_object(decode_udp(datagram))
                udp.send(datagram)
                sent += 1
            # The emulator answers in order: this reply means the batch was processed.
            udp.send(encode_udp(dumps(SYSINFO)))
            plain = decode_udp(udp.recv(65536))
            assert plain.startswith(b'{"system":{"get_sysinfo":'), plain[:40]
            assert json.loads(plain)["system"]["get_sysinfo"]["relay_state"] == 1
    assert sent == 300
    # Every datagram reached the emulator and none of the garbage got an answer
    # (the one recv per batch above got the probe's reply, and the probe only).
    assert _emu_requests(emulator) - before == sent + 12
    assert _sysinfo(port).relay_on is True
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


# =========================================== 4. property: handle() answers anything

_RULES = ["get_rules", "add_rule", "edit_rule", "delete_rule", "delete_all_rules",
          "get_next_action"]  # fmt: skip
#: module -> methods the firmware knows (not read from the emulator: typed in from the docs)
KNOWN_METHODS: dict[str, list[str]] = {
    "system": ["get_sysinfo", "set_relay_state", "set_led_off", "set_dev_alias", "reboot",
               "reset", "set_dev_location", "set_mac_addr", "get_download_state",
               "download_firmware"],
    "time": ["get_time", "get_timezone", "set_time", "set_timezone"],
    "cnCloud": ["get_info", "bind", "unbind", "set_server_url", "get_intl_fw_list"],
    "netif": ["get_scaninfo", "get_stainfo", "set_stainfo"],
    "emeter": ["get_realtime", "get_daystat", "get_monthstat", "erase_emeter_stat"],
    "schedule": _RULES,
    "count_down": _RULES,
    "countdown": _RULES,
    "anti_theft": _RULES,
}  # fmt: skip
_CLOCK = ["year", "month", "mday", "hour", "min", "sec"]
#: method -> the parameters it reads, so that most generated calls get past the name checks
KNOWN_PARAMS: dict[str, list[str]] = {
    "set_relay_state": ["state"],
    "set_led_off": ["off"],
    "set_dev_alias": ["alias"],
    "reboot": ["delay"],
    "reset": ["delay"],
    "set_dev_location": ["latitude", "longitude", "latitude_i", "longitude_i"],
    "set_mac_addr": ["mac"],
    "set_time": _CLOCK,
    "set_timezone": ["index", *_CLOCK],
    "bind": ["username", "password"],
    "set_server_url": ["server"],
    "set_stainfo": ["ssid", "password", "key_type"],
    "get_scaninfo": ["refresh"],
    "get_daystat": ["year", "month"],
    "get_monthstat": ["year"],
    "add_rule": ["name", "enable", "sact", "stime_opt", "smin", "repeat", "wday"],
    "edit_rule": ["id", "name", "enable", "smin"],
    "delete_rule": ["id"],
}
PAIRS = [(module, method) for module, methods in KNOWN_METHODS.items() for method in methods]

# Floats stay within ±1e6 and child ids use decimal digits only; larger floats and
# other Unicode digits have their own regression tests below.
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(-1e6, 1e6, allow_nan=False)
    | st.text(max_size=12)
)
_json = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
#: parameter values: plausible ones (so calls can succeed), wrong types, and nesting
_value = (
    st.integers(-3, 2110)
    | st.sampled_from(["50:C7:BF:01:02:03", "net", "hs100local", "", "x" * 40])
    | _scalars
    | st.lists(_scalars, max_size=2)
    | st.dictionaries(st.text(max_size=4), _scalars, max_size=2)
)


def _params_for(method: str) -> st.SearchStrategy[Any]:
    keys = KNOWN_PARAMS.get(method, [])
    as_dict = st.fixed_dictionaries({}, optional={k: _value for k in keys})
    extra = st.dictionaries(st.text(max_size=6), _value, max_size=2)
    well_formed = st.tuples(as_dict, extra).map(lambda de: {**de[1], **de[0]})
    return st.one_of(well_formed, well_formed, well_formed, st.none(), _json)


_call = st.sampled_from(PAIRS).flatmap(
    lambda mm: _params_for(mm[1]).map(lambda params: (mm[0], mm[1], params))
)
_odd_call = st.tuples(
    st.sampled_from(list(KNOWN_METHODS)) | st.text(max_size=10),
    st.sampled_from(PAIRS).map(lambda mm: mm[1]) | st.text(max_size=10),
    _json,
)
_odd_module = st.tuples(st.sampled_from(list(KNOWN_METHODS)) | st.text(max_size=10), _json)
_decimal_text = st.text(st.characters(categories=["Nd", "Lu", "Ll"]), max_size=8).filter(
    lambda s: not s.isdigit() or s.isdecimal()
)


@st.composite
def requests_for(draw: st.DrawFn, plug: EmulatedPlug) -> dict[str, Any]:
    request: dict[str, Any] = {}
    for module, method, params in draw(st.lists(_call | _call | _odd_call, max_size=5)):
        if module == "context":
            continue
        if not isinstance(request.get(module, {}), dict):
            request[module] = {}
        request.setdefault(module, {})[method] = params
    for module, value in draw(st.lists(_odd_module, max_size=1)):
        if module != "context":
            request[module] = value  # a module whose value is not a method table
    if draw(st.booleans()):
        ids = [plug.child_id(i) for i in range(max(len(plug.outlets), 1))]
        child = st.sampled_from(ids) | st.sampled_from(["00", "01", "5", "99"]) | _decimal_text
        request["context"] = draw(
            st.fixed_dictionaries({"child_ids": st.lists(child, max_size=3)}) | _json
        )
    return request


@settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(model=st.sampled_from(sorted(MODELS)), data=st.data())
def test_handle_answers_any_request(model: str, data: st.DataObject) -> None:
    plug = EmulatedPlug(MODELS[model], clock=lambda: 1_700_000_000.0)
    # Two requests on the same plug: the first may change state the second reads.
    for _ in range(2):
        request = data.draw(requests_for(plug))
        reply = plug.handle(request)
        assert isinstance(reply, dict)
        assert set(reply) == set(request) - {"context"}
        for module, methods in request.items():
            if module == "context":
                continue
            answer = reply[module]
            assert isinstance(answer, dict)
            if not isinstance(methods, dict) or set(answer) != set(methods):
                # Not a method table, or a module this model lacks: one module-level error.
                assert answer == {"err_code": -1, "err_msg": "module not support"}
                continue
            for result in answer.values():
                assert isinstance(result, dict)
                assert isinstance(result.get("err_code"), int)
        # What the emulator answers must go over the wire and back unchanged.
        assert json.loads(dumps(reply)) == reply


_DATE = {"year": 2024, "month": 2, "mday": 29, "hour": 12, "min": 30, "sec": 0}
#: method -> parameters it accepts; each test below breaks one field at a time
VALID_PARAMS: dict[str, dict[str, Any]] = {
    "set_relay_state": {"state": 1},
    "set_led_off": {"off": 1},
    "set_dev_alias": {"alias": "lamp"},
    "reboot": {"delay": 1},
    "reset": {"delay": 1},
    "set_dev_location": {"latitude": 52.5, "longitude": 13.4},
    "set_mac_addr": {"mac": "50:C7:BF:01:02:03"},
    "set_time": _DATE,
    "set_timezone": {"index": 39, **_DATE},
    "bind": {"username": "user@example.net", "password": "pw"},
    "set_server_url": {"server": "example.net"},
    "set_stainfo": {"ssid": "net", "password": "pw", "key_type": 3},
    "get_scaninfo": {"refresh": 1},
    "get_daystat": {"year": 2024, "month": 2},
    "get_monthstat": {"year": 2024},
    "add_rule": {"name": "r", "enable": 1, "sact": 1, "smin": 60},
    "edit_rule": {"id": "no-such-rule", "enable": 0},
    "delete_rule": {"id": "no-such-rule"},
}
#: firmware answers that are not 0 even for well-formed parameters
NON_ZERO = {"bind": -7, "download_firmware": -7, "get_intl_fw_list": -7, "unbind": -8,
            "edit_rule": -3, "delete_rule": -3}  # fmt: skip
# No float beyond ±1e6 and no non-decimal digit strings: see the regression tests below.
BAD_VALUES: list[Any] = [
    None, True, False, 0, -1, 2, 65536, 2**63, -(2**63), 0.5, -1e6, 1e6, "", "1", "x" * 64,
    "50:C7:BF:01:02", [], [1], {}, {"state": 1},
]  # fmt: skip


@pytest.mark.parametrize("model", sorted(MODELS))
def test_handle_survives_each_bad_parameter(model: str) -> None:
    """Every known method, each parameter replaced by each bad value, or left out."""
    calls = 0
    for module, method in PAIRS:
        valid = VALID_PARAMS.get(method, {})
        variants: list[Any] = [valid, None, [], "x", 5]
        for key in sorted({*valid, *KNOWN_PARAMS.get(method, [])}):
            variants.append({k: v for k, v in valid.items() if k != key})
            variants.extend({**valid, key: bad} for bad in BAD_VALUES)
        for params in variants:
            plug = EmulatedPlug(MODELS[model], clock=lambda: 1_700_000_000.0)
            reply = plug.handle({module: {method: params}})
            calls += 1
            answer = reply[module]
            if answer == {"err_code": -1, "err_msg": "module not support"}:
                assert module not in ("system", "time", "cnCloud", "netif", "schedule")
                continue
            result = answer[method]
            assert set(answer) == {method}
            assert isinstance(result.get("err_code"), int), (method, params, result)
            if (module, method) == ("anti_theft", "get_next_action"):
                assert result == {"err_code": -2, "err_msg": "member not support"}
            elif params is valid:
                expected = NON_ZERO.get(method, 0)
                if method == "set_time" and MODELS[model].set_time_refused:
                    expected = -3  # firmware that refuses set_time whatever it is sent
                assert result["err_code"] == expected, (module, method, result)
            elif not isinstance(params, dict | None):
                assert result == {"err_code": -3, "err_msg": "invalid argument"}
            assert json.loads(dumps(reply)) == reply
            # The plug still answers get_sysinfo after whatever that call did.
            assert plug.handle(SYSINFO)["system"]["get_sysinfo"]["err_code"] == 0
    assert calls > 1000


# ============================== regressions: bugs this file found, now fixed


@pytest.mark.parametrize("child", ["²", "0" * 5000], ids=["superscript-two", "5000-digits"])
def test_strip_context_with_odd_digit_child_id_answers_minus_3(child: str) -> None:
    plug = EmulatedPlug(MODELS["hs300"])
    reply = plug.handle({"context": {"child_ids": [child]}, **SET_ON})
    assert reply == {"system": {"set_relay_state": {"err_code": -3, "err_msg": "invalid argument"}}}


@pytest.mark.parametrize("model", ["hs105", "hs300"])
def test_huge_latitude_does_not_poison_sysinfo(model: str) -> None:
    plug = EmulatedPlug(MODELS[model])
    plug.handle({"system": {"set_dev_location": {"latitude": 1e308, "longitude": 0}}})
    reply = plug.handle(SYSINFO)
    assert reply["system"]["get_sysinfo"]["err_code"] == 0


@pytest.mark.parametrize("how", ["runner", "subprocess"])
def test_cli_error_line_is_one_line_even_if_plug_sends_newlines(how: str) -> None:
    hostile = {"system": {"err_code": -1, "err_msg": "module not support\nsecond line"}}
    with FakePlug(lambda _m: (encode_tcp(dumps(hostile)), False)) as fake:
        code, _out, err = run_cli(how, ["-H", fake.target, "state"])
    assert code == 1
    assert_one_error_line(err)


# Replies that are JSON objects with the right shape but wrongly typed fields.
WRONG_TYPES = {
    "children-int": {"system": {"get_sysinfo": {"err_code": 0, "children": 5}}},
    "latitude-text": {
        "system": {"get_sysinfo": {"err_code": 0, "relay_state": 1, "latitude": "north"}}
    },
    "relay-infinity": {"system": {"get_sysinfo": {"err_code": 0, "relay_state": float("inf")}}},
}


@pytest.mark.parametrize("how", ["runner", "subprocess"])
@pytest.mark.parametrize("body", list(WRONG_TYPES))
def test_cli_wrongly_typed_sysinfo_is_protocol_error(how: str, body: str) -> None:
    with FakePlug(lambda _m: (encode_tcp(dumps(WRONG_TYPES[body])), False)) as fake:
        code, _out, err = run_cli(how, ["-H", fake.target, "state"])
    assert code == 3, err
    assert_one_error_line(err)


def test_wrongly_typed_emeter_reading_is_protocol_error() -> None:
    replies = {
        "system": {"system": {"get_sysinfo": {"err_code": 0, "relay_state": 1}}},
        "emeter": {"emeter": {"get_realtime": {"err_code": 0, "power": "x"}}},
    }

    def respond(message: bytes) -> tuple[bytes, bool]:
        (module,) = json.loads(message)
        return encode_tcp(dumps(replies[module])), False

    with (
        FakePlug(respond) as fake,
        BlockingTransport(HOST, fake.port, timeout=LONG) as t,
        pytest.raises(ProtocolError),
    ):
        ops.run_sync(ops.emeter_realtime(), t.query)


def test_frame_decoder_returns_whole_frame_before_rejecting_the_next() -> None:
    decoder = FrameDecoder()
    decoder.feed(encode_tcp(b'{"a":1}') + HEADER.pack(MAX_MESSAGE + 1))
    assert decoder.next_message() == b'{"a":1}'
    with pytest.raises(ProtocolError):
        decoder.next_message()
