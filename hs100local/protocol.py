"""Sans-I/O core of the legacy TP-Link smart-home protocol ("XOR on port 9999").

Everything here is a pure function or a small state machine over bytes: no sockets,
no event loop, no clock. Transports (asyncio, blocking) and the emulator are thin
wrappers around it, which keeps the awkward parts (cipher, framing limits, error
codes) testable in isolation — the approach h11 takes for HTTP.

Wire format (see ``shared/docs/plug-facts.md``):

* payload: JSON ``{"module": {"method": {params}}}``, several modules/methods may be
  merged in one request and are answered in one reply;
* cipher: XOR autokey, first key ``0xAB``; ``c = p ^ key; key = c``;
* TCP: 4-byte big-endian length, then the ciphertext; UDP: ciphertext only.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from hs100local.errors import DeviceError, ProtocolError

INITIAL_KEY = 0xAB
#: Real replies are below 16 KiB; anything announcing more than this is not a plug.
MAX_MESSAGE = 64 * 1024
HEADER = struct.Struct(">I")
HEADER_SIZE = HEADER.size

# --------------------------------------------------------------------- cipher


def encrypt(plain: bytes) -> bytes:
    """Encrypt with the XOR autokey cipher.

    ``c[i] = 0xAB ^ p[0] ^ … ^ p[i]`` is a prefix-XOR scan. Doing it on one big
    integer in log2(n) shift/xor steps runs in C instead of a per-byte Python
    loop, which matters for the emulator and for bulk queries.
    """
    n = len(plain)
    if n == 0:
        return b""
    x = int.from_bytes(plain, "big") ^ (INITIAL_KEY << (8 * (n - 1)))
    shift = 8
    total = 8 * n
    while shift < total:
        x ^= x >> shift
        shift <<= 1
    return x.to_bytes(n, "big")


def decrypt(cipher: bytes) -> bytes:
    """Decrypt: ``p[i] = c[i] ^ c[i-1]`` with ``c[-1] = 0xAB``, done as one big XOR."""
    n = len(cipher)
    if n == 0:
        return b""
    keys = (INITIAL_KEY << (8 * (n - 1))) | (int.from_bytes(cipher, "big") >> 8)
    return (int.from_bytes(cipher, "big") ^ keys).to_bytes(n, "big")


# -------------------------------------------------------------------- framing


def encode_tcp(message: bytes) -> bytes:
    """Frame a plaintext message for TCP: length prefix + ciphertext."""
    if len(message) > 0xFFFFFFFF:
        raise ValueError("message too long for a 32-bit length prefix")
    return HEADER.pack(len(message)) + encrypt(message)


def encode_udp(message: bytes) -> bytes:
    """UDP carries the bare ciphertext (no length prefix, either direction)."""
    return encrypt(message)


def decode_udp(datagram: bytes) -> bytes:
    """Decrypt one UDP datagram to plaintext."""
    return decrypt(datagram)


def parse_header(header: bytes, limit: int = MAX_MESSAGE) -> int:
    """Return the announced length of a TCP frame, refusing absurd sizes."""
    if len(header) != HEADER_SIZE:
        raise ProtocolError(f"truncated length prefix ({len(header)} of 4 bytes)")
    (length,) = HEADER.unpack(header)
    if length > limit:
        raise ProtocolError(f"announced message length {length} exceeds the {limit}-byte cap")
    return length


class FrameDecoder:
    """Incremental TCP frame decoder: feed bytes as they arrive, take whole messages.

    Replies from real plugs span several TCP segments, and a stream may hold
    several frames; the decoder handles both and never buffers more than one
    frame plus its header (the cap is checked as soon as the header is complete).
    """

    def __init__(self, limit: int = MAX_MESSAGE) -> None:
        self.limit = limit
        self._buf = bytearray()
        self._need: int | None = None

    def feed(self, data: bytes) -> None:
        self._buf += data
        if self._need is None and len(self._buf) >= HEADER_SIZE:
            self._need = parse_header(bytes(self._buf[:HEADER_SIZE]), self.limit)

    def next_message(self) -> bytes | None:
        """Return the next whole decrypted message, or ``None`` if more bytes are needed.

        A bad header behind a whole frame is only reported on the call after the
        one that returns that frame, so no valid message is lost to it.
        """
        if self._need is None and len(self._buf) >= HEADER_SIZE:
            self._need = parse_header(bytes(self._buf[:HEADER_SIZE]), self.limit)
        if self._need is None or len(self._buf) < HEADER_SIZE + self._need:
            return None
        end = HEADER_SIZE + self._need
        cipher = bytes(self._buf[HEADER_SIZE:end])
        del self._buf[:end]
        self._need = None
        return decrypt(cipher)

    @property
    def pending(self) -> int:
        """Bytes received that do not yet form a whole message."""
        return len(self._buf)


# ------------------------------------------------------------------- messages

Request = dict[str, Any]
Reply = dict[str, Any]


def build_request(
    module: str,
    method: str,
    params: dict[str, Any] | None = None,
    child_ids: list[str] | None = None,
) -> Request:
    """Build ``{"module": {"method": params}}``, addressed to outlets if ``child_ids``."""
    request: Request = {}
    if child_ids:
        request["context"] = {"child_ids": list(child_ids)}
    request[module] = {method: dict(params or {})}
    return request


def merge_requests(*requests: Request) -> Request:
    """Merge requests into one (the plug answers all modules/methods in one reply)."""
    merged: Request = {}
    for request in requests:
        for module, methods in request.items():
            if module == "context":
                if merged.get("context", methods) != methods:
                    raise ValueError("cannot merge requests addressed to different outlets")
                merged["context"] = methods
                continue
            merged.setdefault(module, {}).update(methods)
    return merged


def dumps(obj: Any) -> bytes:
    """Serialise compactly, as the vendor app does (no spaces)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def loads(data: bytes) -> Reply:
    """Parse a decrypted message, which must be a JSON object."""
    try:
        obj = json.loads(data.decode("utf-8", errors="replace"))
    except ValueError as exc:
        preview = data[:32].hex()
        raise ProtocolError(f"message is not JSON (starts {preview}): {exc}") from None
    except RecursionError:
        raise ProtocolError("message is JSON nested too deeply") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"message is JSON but not an object: {type(obj).__name__}")
    return obj


def is_read_only(request: Request) -> bool:
    """Only ``get_*`` methods: sending it twice changes nothing. Anything else (a switch,
    a clock, a reboot) must not be re-sent after a connection broke once it may have
    reached the plug: the plug may have acted, and a repeated ``set_timezone`` would
    set a time that is stale by then."""
    methods = [method for module, body in request.items() if module != "context"
               and isinstance(body, dict) for method in body]
    return bool(methods) and all(str(m).startswith("get_") for m in methods)


def check_request(data: bytes, limit: int = MAX_MESSAGE) -> Request:
    """Check a hand-written request before it goes to a plug; ValueError says what is
    wrong. A request is an object of modules, each an object of methods whose
    parameters are an object or null (``context`` is an object too), and fits in one
    message. Anything else the plug answers by closing the connection, which would
    look like a network fault instead of the typo it is."""
    if len(data) > limit:
        raise ValueError(f"the request is {len(data)} bytes; a plug message is at most {limit}")
    try:
        obj = json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    except RecursionError:
        raise ValueError("not JSON a plug takes: nested too deeply") from None
    if not isinstance(obj, dict):
        raise ValueError(f"a request is a JSON object of modules, not {_json_kind(obj)}")
    if not any(key != "context" for key in obj):
        raise ValueError('the request names no module, e.g. {"system":{"get_sysinfo":{}}}')
    for module, methods in obj.items():
        if not isinstance(methods, dict):
            raise ValueError(f"{module!r} must be an object of methods, not "
                             f"{_json_kind(methods)}")
        if module == "context":
            continue
        for method, params in methods.items():
            if params is not None and not isinstance(params, dict):
                raise ValueError(f"the parameters of {module}.{method} must be an object "
                                 f"or null, not {_json_kind(params)}")
    return obj


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    names = {list: "an array", str: "a string", int: "a number", float: "a number",
             type(None): "null", dict: "an object"}
    return names.get(type(value), type(value).__name__)


def _error_of(obj: Any) -> tuple[int, str] | None:
    if isinstance(obj, dict) and "err_code" in obj:
        code = obj.get("err_code")
        if isinstance(code, int) and code != 0:
            return code, str(obj.get("err_msg", ""))
        if not isinstance(code, int):
            raise ProtocolError(f"err_code is not an integer: {code!r}")
    return None


def method_result(reply: Reply, module: str, method: str) -> dict[str, Any]:
    """Extract ``reply[module][method]``, raising :class:`DeviceError` for err_codes.

    Errors come at two levels: a module the firmware lacks answers
    ``{"module": {"err_code": -1, ...}}``; a method it lacks or refuses answers
    ``{"module": {"method": {"err_code": -2, ...}}}``.
    """
    section = reply.get(module)
    if section is None:
        raise ProtocolError(f"reply has no '{module}' section")
    err = _error_of(section)
    if err and method not in section:
        raise DeviceError(module, None, *err)
    if not isinstance(section, dict) or method not in section:
        raise ProtocolError(f"reply has no '{module}.{method}' result")
    result = section[method]
    if not isinstance(result, dict):
        raise ProtocolError(f"'{module}.{method}' result is not an object")
    err = _error_of(result)
    if err:
        raise DeviceError(module, method, *err)
    return result


def request_bytes_tcp(request: Request) -> bytes:
    """Serialise and frame a request for TCP in one step."""
    return encode_tcp(dumps(request))
