"""Sans-I/O HTTP/1.1, server side: parse a request head, encode a response.

No sockets here, only bytes in and bytes out, so that every rule about what we
accept can be tested without a network and the transport
(:mod:`hs100local.web.server`) only decides *when* to read and write.

The parser is deliberately strict. The dashboard is a small local service; it
gains nothing from tolerating odd framing, and every tolerance in HTTP framing
(obs-fold, duplicate or conflicting ``Content-Length``, ``Transfer-Encoding``,
whitespace before a colon, bare CR) is a known request-smuggling or
header-injection vector when a proxy sits in front. Each rejection is an
:class:`HttpError` with a fixed status:

* 400 -- malformed request line, header line, obs-fold, a header name that is
  not a token (including whitespace before the colon), a control character in
  a header value, a target that is not origin-form (``*`` included), non-ASCII
  or control bytes in the request line, a path that decodes to NUL, duplicate,
  non-numeric or negative ``Content-Length``, a missing or repeated ``Host`` on
  HTTP/1.1;
* 413 -- a ``Content-Length`` with more than 18 digits (bigger than anything
  any limit here admits, and never converted to an int);
* 414 -- a request target longer than :data:`MAX_TARGET`;
* 501 -- any ``Transfer-Encoding`` (we only take ``Content-Length`` bodies) and
  a method outside :data:`KNOWN_METHODS`;
* 505 -- an HTTP version other than 1.0 and 1.1.
"""

from __future__ import annotations

import email.utils
import http
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote

__all__ = [
    "KNOWN_METHODS",
    "MAX_TARGET",
    "SECURITY_HEADERS",
    "HttpError",
    "Request",
    "Response",
    "encode_response",
    "find_head_end",
    "leading_empty_lines",
    "parse_head",
]

#: longest request target accepted (414 beyond): URLs of the dashboard are short
MAX_TARGET = 4096
#: methods we parse; anything else is 501 (the application decides which it allows: 405)
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})
#: sent unless the response sets the header itself: a local control panel is never
#: framed, never cached, never MIME-sniffed, and leaks no URL to other sites
SECURITY_HEADERS: tuple[tuple[str, str], ...] = (
    ("X-Content-Type-Options", "nosniff"),
    ("Cache-Control", "no-store"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
)
#: a Content-Length of more digits is refused unread (Python's int() of a
#: multi-kilobyte digit string costs time and, from 3.11, raises)
_MAX_LENGTH_DIGITS = 18
#: headers the transport owns: a handler that sets them would break message framing
_FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding", "connection"})

_HEAD_END = re.compile(rb"\r?\n\r?\n")
_EMPTY_LINES = re.compile(rb"(?:\r?\n)+")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TOKEN_BYTES = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VERSION = re.compile(rb"HTTP/([0-9])\.([0-9])")
_REQUEST_LINE_BAD = re.compile(rb"[^\x20-\x7e]")  # controls (TAB too) and non-ASCII
_VALUE_BAD = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # controls but TAB; obs-text is fine
_DIGITS = re.compile(r"[0-9]+")
_NO_BODY_STATUSES = frozenset({204, 304})


class HttpError(Exception):
    """A request we refuse; the transport answers ``status`` with ``reason`` as the body."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


# ------------------------------------------------------------------ requests


@dataclass(frozen=True)
class Request:
    """One parsed request. Frozen: handlers share it, none should rewrite what the
    client sent (derive a new one with :func:`dataclasses.replace` if needed)."""

    method: str
    target: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes = b""
    client: tuple[str, int] = ("", 0)
    version: str = "HTTP/1.1"

    def header(self, name: str, default: str | None = None) -> str | None:
        """The (joined) value of header ``name``, whatever case the caller spells it in."""
        return self.headers.get(name.lower(), default)

    def first(self, name: str, default: str | None = None) -> str | None:
        """The first value of query parameter ``name``: most parameters are single."""
        values = self.query.get(name)
        return values[0] if values else default

    def cookies(self) -> dict[str, str]:
        """The Cookie header as a dict; leniently, because browsers send whatever other
        pages on the same host (the plugs' neighbours) once set: malformed parts are
        skipped, never raised. The first of repeated names wins (RFC 6265 5.4 sends
        the most specific first)."""
        jar: dict[str, str] = {}
        for part in (self.header("cookie") or "").split(";"):
            name, sep, value = part.partition("=")
            name = name.strip()
            if not sep or not _TOKEN.fullmatch(name) or name in jar:
                continue
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            jar[name] = value
        return jar

    @property
    def keep_alive(self) -> bool:
        """Whether the client lets the connection stay open after this request:
        the default of its version unless its Connection header says otherwise."""
        tokens = {t.strip().lower() for t in (self.header("connection") or "").split(",")}
        if self.version == "HTTP/1.1":
            return "close" not in tokens
        return "keep-alive" in tokens and "close" not in tokens


def find_head_end(buffer: bytes | bytearray, start: int = 0) -> int:
    """Index just past the blank line ending a request head, or -1.

    ``start`` lets a transport resume where its last scan stopped instead of
    rescanning a slowly growing buffer (quadratic for a client that sends a byte
    at a time): pass ``len(previous_buffer) - 3`` so that a terminator split
    across two reads is still found. Bare LF line endings count (RFC 9112 2.2).
    """
    match = _HEAD_END.search(buffer, max(0, start))
    return match.end() if match else -1


def leading_empty_lines(buffer: bytes | bytearray) -> int:
    """How many bytes of empty lines start ``buffer``; a server should ignore at least
    one before a request line (RFC 9112 2.2): some clients send CRLF after a body."""
    match = _EMPTY_LINES.match(buffer)
    return match.end() if match else 0


def parse_head(data: bytes, *, client: tuple[str, int] = ("", 0)) -> tuple[Request, int]:
    """Parse one complete request head (request line, header lines, blank line).

    Returns the request (its body empty) and the Content-Length of the body to
    read next (0 without one). What follows the blank line is not looked at.
    Raises :class:`HttpError` for anything the module docstring lists.
    """
    end = find_head_end(data)
    if end < 0:
        raise HttpError(400, "incomplete request head")
    lines = [line[:-1] if line.endswith(b"\r") else line for line in data[:end].split(b"\n")]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise HttpError(400, "empty request")
    method, target, version = _parse_request_line(lines[0])
    path, query = _parse_target(target)
    fields = [_parse_header_line(line) for line in lines[1:]]
    headers = _join_headers(fields)
    length = _check_framing(fields, version)
    request = Request(method=method, target=target, path=path, query=query, headers=headers,
                      client=client, version=version)
    return request, length


def _parse_request_line(line: bytes) -> tuple[str, str, str]:
    """Method, target, version; validated in that order of meaning: the line's shape
    (400), the version (505: we cannot read the rest of a version we do not speak),
    the method (400 if not a token, 501 if unknown), the target's length (414)."""
    if _REQUEST_LINE_BAD.search(line):
        raise HttpError(400, "invalid characters in request line")
    parts = line.split(b" ")
    if len(parts) != 3 or not all(parts):
        raise HttpError(400, "malformed request line")
    method, target, version = parts
    match = _VERSION.fullmatch(version)
    if match is None:
        raise HttpError(400, "malformed HTTP version")
    if match.groups() not in ((b"1", b"0"), (b"1", b"1")):
        raise HttpError(505, "HTTP version not supported")
    if not _TOKEN_BYTES.fullmatch(method):
        raise HttpError(400, "malformed method")
    if method.decode("ascii") not in KNOWN_METHODS:
        raise HttpError(501, "method not implemented")
    if len(target) > MAX_TARGET:
        raise HttpError(414, "request target too long")
    return method.decode("ascii"), target.decode("ascii"), version.decode("ascii")


def _parse_target(target: str) -> tuple[str, dict[str, list[str]]]:
    """Decoded path and query of an origin-form target. Absolute-form (proxies) and
    ``*`` (server-wide OPTIONS) mean nothing to a dashboard: 400."""
    if not target.startswith("/"):
        raise HttpError(400, "request target must be a path")
    raw_path, _, raw_query = target.partition("?")
    raw_path = raw_path.partition("#")[0]
    path = unquote(raw_path, errors="replace")  # a bad escape such as %zz stays as is
    if "\x00" in path:
        raise HttpError(400, "NUL in path")
    return path, parse_qs(raw_query, keep_blank_values=True)


def _parse_header_line(line: bytes) -> tuple[str, str]:
    """(lower-case name, stripped latin-1 value) of one header line."""
    if line[:1] in (b" ", b"\t"):
        raise HttpError(400, "obsolete line folding")
    name, colon, value = line.partition(b":")
    if not colon:
        raise HttpError(400, "malformed header line")
    if not _TOKEN_BYTES.fullmatch(name):
        raise HttpError(400, "malformed header name")
    if _VALUE_BAD.search(value):
        raise HttpError(400, "control character in header value")
    return name.decode("ascii").lower(), value.decode("latin-1").strip(" \t")


def _join_headers(fields: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Repeated fields as one (RFC 9110 5.3), Cookie with "; " as browsers send it."""
    headers: dict[str, str] = {}
    for name, value in fields:
        if name in headers:
            separator = "; " if name == "cookie" else ", "
            headers[name] = headers[name] + separator + value
        else:
            headers[name] = value
    return headers


def _check_framing(fields: list[tuple[str, str]], version: str) -> int:
    """The body length, after the checks that keep two parsers from disagreeing
    on where this request ends (request smuggling)."""
    if any(name == "transfer-encoding" for name, _ in fields):
        raise HttpError(501, "Transfer-Encoding not supported")
    hosts = sum(1 for name, _ in fields if name == "host")
    if hosts > 1 or (hosts == 0 and version == "HTTP/1.1"):
        raise HttpError(400, "exactly one Host header required")
    lengths = [value for name, value in fields if name == "content-length"]
    if not lengths:
        return 0
    if len(lengths) > 1:
        raise HttpError(400, "duplicate Content-Length")
    if not _DIGITS.fullmatch(lengths[0]):
        raise HttpError(400, "invalid Content-Length")
    if len(lengths[0]) > _MAX_LENGTH_DIGITS:
        raise HttpError(413, "content too large")
    return int(lengths[0])


# ----------------------------------------------------------------- responses


@dataclass
class Response:
    """What a handler returns; the transport adds framing and the default headers."""

    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def text(cls, text: str, status: int = 200) -> Response:
        return cls(status, text.encode("utf-8"))

    @classmethod
    def json(cls, obj: Any, status: int = 200) -> Response:
        """Compact UTF-8 JSON. NaN and infinities raise ValueError instead of producing
        the non-JSON that ``json.dumps`` writes by default and browsers refuse."""
        body = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        return cls(status, body.encode("utf-8"), "application/json")

    @classmethod
    def html(cls, html: str, status: int = 200) -> Response:
        return cls(status, html.encode("utf-8"), "text/html; charset=utf-8")

    @classmethod
    def redirect(cls, location: str, status: int = 303) -> Response:
        """303 by default: after a POST the browser follows with a GET (POST/redirect/GET)."""
        _check_header("Location", location)
        return cls(status, b"", headers=[("Location", location)])

    @classmethod
    def error(cls, status: int, message: str) -> Response:
        """One line of plain text: error bodies are read by people with curl and by
        scripts, neither wants markup. (For 405 the caller adds ``Allow``.)"""
        line = message.replace("\r", " ").replace("\n", " ")
        return cls(status, line.encode("utf-8"))


def encode_response(response: Response, *, keep_alive: bool, head_only: bool = False,
                    date: str | None = None) -> bytes:
    """The bytes of ``response``: status line, headers, body.

    ``Content-Length`` is always sent (for HEAD too: the length GET would have
    had), except for 1xx, 204 and 304, which have neither body nor
    ``Content-Type``/``Content-Length``. A header the response sets itself
    (``Content-Type``, ``Date`` or one of :data:`SECURITY_HEADERS`) replaces
    ours. ``Content-Length``, ``Transfer-Encoding`` and ``Connection`` belong to
    the transport; a response setting them, a header value with CR or LF
    (response splitting) or one that is not latin-1 raises ValueError: those are
    bugs in the caller, not something to send.
    """
    status = response.status
    if not 100 <= status <= 599:
        raise ValueError(f"status {status} out of range")
    own = {name.lower() for name, _ in response.headers}
    if own & _FRAMING_HEADERS:
        raise ValueError(f"the transport sets {sorted(own & _FRAMING_HEADERS)}")
    bodyless = status < 200 or status in _NO_BODY_STATUSES
    fields: list[tuple[str, str]] = []
    if not bodyless:
        if "content-type" not in own:
            fields.append(("Content-Type", response.content_type))
        fields.append(("Content-Length", str(len(response.body))))
    if "date" not in own:
        fields.append(("Date", date or email.utils.formatdate(usegmt=True)))
    fields.append(("Connection", "keep-alive" if keep_alive else "close"))
    fields.extend(response.headers)
    fields.extend(item for item in SECURITY_HEADERS if item[0].lower() not in own)
    head = bytearray(f"HTTP/1.1 {status} {_reason(status)}\r\n".encode("ascii"))
    for name, value in fields:
        head += _check_header(name, value)
    head += b"\r\n"
    if bodyless or head_only:
        return bytes(head)
    return bytes(head) + response.body


def _reason(status: int) -> str:
    """The standard phrase; none for a code the stdlib does not know (it is optional)."""
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""


def _check_header(name: str, value: str) -> bytes:
    """One encoded header line, or ValueError for what would split or corrupt the head."""
    if not _TOKEN.fullmatch(name):
        raise ValueError(f"invalid header name {name!r}")
    if "\r" in value or "\n" in value or "\x00" in value:
        raise ValueError(f"CR, LF or NUL in header {name}")
    try:
        return f"{name}: {value}\r\n".encode("latin-1")
    except UnicodeEncodeError as exc:
        raise ValueError(f"header {name} is not latin-1 (percent-encode it)") from exc
