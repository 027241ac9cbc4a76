"""The dashboard's HTTP layer: the sans-I/O parser/encoder byte by byte, then the asyncio
server on loopback against stdlib clients (http.client, urllib) and raw sockets for
what no polite client sends (pipelining, slow heads, garbage, oversized input).

Timeouts under test are set small (0.2-0.3 s) through the constructor; the tests
wait for the server's answer or its close, never sleep.
"""

from __future__ import annotations

import asyncio
import gc
import http.client
import json
import logging
import re
import socket
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from servicekit import LoopThread

from hs100local.web.http import (
    MAX_TARGET,
    SECURITY_HEADERS,
    HttpError,
    Request,
    Response,
    encode_response,
    find_head_end,
    leading_empty_lines,
    parse_head,
)
from hs100local.web.server import HttpServer

DATE = "Sun, 06 Nov 1994 08:49:37 GMT"


def head(*lines: str, version: str = "HTTP/1.1") -> bytes:
    """A request head: the request line (``version`` appended) and header lines."""
    first, *rest = lines
    return "\r\n".join([f"{first} {version}", *rest, "", ""]).encode("latin-1")


def parse(data: bytes) -> Request:
    request, _length = parse_head(data)
    return request


# ============================================================== parse_head


def test_parse_head_fields() -> None:
    request, length = parse_head(
        head("POST /a%20b/c?x=1&y=&x=2&flag", "Host: example", "Content-Length: 12",
             "X-Thing:   spaced value \t"), client=("10.0.0.2", 5555))
    assert length == 12
    assert request.method == "POST"
    assert request.target == "/a%20b/c?x=1&y=&x=2&flag"
    assert request.path == "/a b/c"
    assert request.query == {"x": ["1", "2"], "y": [""], "flag": [""]}
    assert request.headers == {"host": "example", "content-length": "12",
                               "x-thing": "spaced value"}
    assert request.body == b""
    assert request.client == ("10.0.0.2", 5555)
    assert request.version == "HTTP/1.1"
    assert request.first("x") == "1"
    assert request.first("y") == ""
    assert request.first("missing") is None
    assert request.first("missing", "d") == "d"
    assert request.header("X-THING") == "spaced value"
    assert request.header("nope") is None
    assert request.header("nope", "d") == "d"


def test_parse_head_without_body_length_is_zero_and_http10_needs_no_host() -> None:
    request, length = parse_head(head("GET /", version="HTTP/1.0"))
    assert (request.version, request.headers, length) == ("HTTP/1.0", {}, 0)


def test_parse_head_accepts_bare_lf_and_mixed_line_endings() -> None:
    request = parse(b"GET /x HTTP/1.1\nHost: h\r\nA: 1\n\n")
    assert request.path == "/x"
    assert request.headers == {"host": "h", "a": "1"}


def test_parse_head_ignores_what_follows_the_head() -> None:
    request, length = parse_head(head("POST /", "Host: h", "Content-Length: 3") + b"abcGET")
    assert (request.body, length) == (b"", 3)


def test_repeated_headers_are_joined_cookie_with_semicolon() -> None:
    request = parse(head("GET /", "Host: h", "Accept: a/b", "X-A: 1", "accept: c/d",
                         "Cookie: a=1", "X-A: 2", "COOKIE: b=2"))
    assert request.headers["accept"] == "a/b, c/d"
    assert request.headers["x-a"] == "1, 2"
    assert request.headers["cookie"] == "a=1; b=2"
    assert request.cookies() == {"a": "1", "b": "2"}


def test_header_values_are_latin1() -> None:
    request = parse(b"GET / HTTP/1.1\r\nHost: h\r\nX-N: caf\xe9\r\n\r\n")
    assert request.header("x-n") == "café"


@pytest.mark.parametrize(("cookie", "expected"), [
    ("a=1; b=2", {"a": "1", "b": "2"}),
    ('s="quoted value"; t=x', {"s": "quoted value", "t": "x"}),
    ("a=1; junk; =nameless; b=2=3; bad name=4; ;;", {"a": "1", "b": "2=3"}),
    ("a=first; a=second", {"a": "first"}),
    ("   ", {}),
    ("=;=;=", {}),
    ("x=; y", {"x": ""}),
])
def test_cookies_are_parsed_leniently(cookie: str, expected: dict[str, str]) -> None:
    assert parse(head("GET /", "Host: h", f"Cookie: {cookie}")).cookies() == expected


def test_cookies_without_header() -> None:
    assert parse(head("GET /", "Host: h")).cookies() == {}


@pytest.mark.parametrize(("version", "connection", "keep"), [
    ("HTTP/1.1", None, True),
    ("HTTP/1.1", "close", False),
    ("HTTP/1.1", "Keep-Alive, CLOSE", False),
    ("HTTP/1.1", "keep-alive", True),
    ("HTTP/1.0", None, False),
    ("HTTP/1.0", "Keep-Alive", True),
    ("HTTP/1.0", "close", False),
])
def test_keep_alive(version: str, connection: str | None, keep: bool) -> None:
    lines = ["GET /", "Host: h"] + ([f"Connection: {connection}"] if connection else [])
    assert parse(head(*lines, version=version)).keep_alive is keep


@pytest.mark.parametrize(("target", "path"), [
    ("/plain", "/plain"),
    ("/a%20b", "/a b"),
    ("/caf%C3%A9", "/café"),
    ("/bad%zzescape%", "/bad%zzescape%"),
    ("/half%4", "/half%4"),
    ("/not-utf8%FF", "/not-utf8\ufffd"),
    ("/slash%2Fencoded", "/slash/encoded"),
    ("/q?x=%00", "/q"),
    ("/frag#ment", "/frag"),
])
def test_path_is_percent_decoded_without_crashing(target: str, path: str) -> None:
    assert parse(head(f"GET {target}", "Host: h")).path == path


def test_query_is_percent_decoded() -> None:
    request = parse(head("GET /?name=a%20b+c&e=%E2%82%AC", "Host: h"))
    assert request.query == {"name": ["a b c"], "e": ["€"]}


def test_target_of_max_length_is_accepted() -> None:
    target = "/" + "a" * (MAX_TARGET - 1)
    assert parse(head(f"GET {target}", "Host: h")).target == target


BAD_HEADS: list[tuple[str, bytes, int]] = [
    # request line
    ("empty", b"\r\n\r\n", 400),
    ("incomplete", b"GET / HTTP/1.1\r\nHost: h\r\n", 400),
    ("two parts", b"GET /\r\nHost: h\r\n\r\n", 400),
    ("four parts", b"GET / x HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    ("double space", b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    ("leading space", b" GET / HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    ("tab separator", b"GET\t/ HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    ("non-ascii target", b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    ("control in target", b"GET /\x01 HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    ("NUL in line", b"GET /\x00 HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    ("DEL in line", b"GET /\x7f HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    ("garbage", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),
    ("bad method token", b"GE(T / HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    ("absolute-form", b"GET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    ("asterisk", b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    ("relative", b"GET x HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    ("NUL in path", b"GET /a%00b HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    ("version garbage", b"GET / HTTP/1.1x\r\nHost: h\r\n\r\n", 400),
    ("version lower", b"GET / http/1.1\r\nHost: h\r\n\r\n", 400),
    ("version short", b"GET / HTTP/1\r\nHost: h\r\n\r\n", 400),
    # header lines
    ("obs-fold space", b"GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n 2\r\n\r\n", 400),
    ("obs-fold tab", b"GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n\t2\r\n\r\n", 400),
    ("no colon", b"GET / HTTP/1.1\r\nHost: h\r\nnocolon\r\n\r\n", 400),
    ("empty name", b"GET / HTTP/1.1\r\nHost: h\r\n: v\r\n\r\n", 400),
    ("space before colon", b"GET / HTTP/1.1\r\nHost : h\r\n\r\n", 400),
    ("tab before colon", b"GET / HTTP/1.1\r\nHost\t: h\r\n\r\n", 400),
    ("space in name", b"GET / HTTP/1.1\r\nHost: h\r\nX A: 1\r\n\r\n", 400),
    ("separator in name", b"GET / HTTP/1.1\r\nHost: h\r\nX(A): 1\r\n\r\n", 400),
    ("non-ascii name", b"GET / HTTP/1.1\r\nHost: h\r\nX\xe9: 1\r\n\r\n", 400),
    ("control in value", b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\x01b\r\n\r\n", 400),
    ("bare CR in value", b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\rb\r\n\r\n", 400),
    ("NUL in value", b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\x00\r\n\r\n", 400),
    # Host
    ("no host on 1.1", b"GET / HTTP/1.1\r\nX-A: 1\r\n\r\n", 400),
    ("two hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    # Content-Length
    ("duplicate length", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n"
                         b"Content-Length: 3\r\n\r\n", 400),
    ("conflicting length", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n"
                           b"Content-Length: 4\r\n\r\n", 400),
    ("length list", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3, 3\r\n\r\n", 400),
    ("length negative", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n", 400),
    ("length plus", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +1\r\n\r\n", 400),
    ("length word", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: ten\r\n\r\n", 400),
    ("length hex", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0x10\r\n\r\n", 400),
    ("length empty", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length:\r\n\r\n", 400),
    ("length unicode digit", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: \u00b2\r\n\r\n"
     .encode("latin-1"), 400),
    ("length huge", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: " + b"9" * 19
     + b"\r\n\r\n", 413),
    ("length very huge", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: " + b"9" * 5000
     + b"\r\n\r\n", 413),
    # 501
    ("chunked", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n", 501),
    ("identity", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: identity\r\n\r\n", 501),
    ("TE and CL", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n", 501),
    ("unknown method", b"BREW /pot HTTP/1.1\r\nHost: h\r\n\r\n", 501),
    ("lower-case method", b"get / HTTP/1.1\r\nHost: h\r\n\r\n", 501),
    ("CONNECT", b"CONNECT /x HTTP/1.1\r\nHost: h\r\n\r\n", 501),
    ("TRACE", b"TRACE / HTTP/1.1\r\nHost: h\r\n\r\n", 501),
    # 505
    ("HTTP/2.0", b"GET / HTTP/2.0\r\nHost: h\r\n\r\n", 505),
    ("HTTP/1.2", b"GET / HTTP/1.2\r\nHost: h\r\n\r\n", 505),
    ("HTTP/0.9", b"GET / HTTP/0.9\r\n\r\n", 505),
    # 414
    ("long target", b"GET /" + b"a" * MAX_TARGET + b" HTTP/1.1\r\nHost: h\r\n\r\n", 414),
]


@pytest.mark.parametrize(("data", "status"), [(d, s) for _, d, s in BAD_HEADS],
                         ids=[name for name, _, _ in BAD_HEADS])
def test_parse_head_errors(data: bytes, status: int) -> None:
    with pytest.raises(HttpError) as info:
        parse_head(data)
    assert info.value.status == status
    assert info.value.reason and "\n" not in info.value.reason


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"])
def test_known_methods(method: str) -> None:
    assert parse(head(f"{method} /", "Host: h")).method == method


def test_http_error_carries_status_and_reason() -> None:
    error = HttpError(418, "short")
    assert (error.status, error.reason, str(error)) == (418, "short", "418 short")


# ========================================================= find_head_end


@pytest.mark.parametrize(("buffer", "end"), [
    (b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", 27),
    (b"GET / HTTP/1.1\r\nHost: h\r\n\r\nBODY", 27),
    (b"GET / HTTP/1.1\nHost: h\n\n", 24),
    (b"GET / HTTP/1.1\r\nHost: h\n\r\n", 26),
    (b"GET / HTTP/1.1\r\nHost: h\r\n", -1),
    (b"GET / HTTP/1.1\r\nHost: h\r\n\r", -1),
    (b"", -1),
])
def test_find_head_end(buffer: bytes, end: int) -> None:
    assert find_head_end(buffer) == end


def test_find_head_end_resumes_across_a_split_terminator() -> None:
    whole = head("GET /", "Host: h")
    for cut in range(1, len(whole)):
        first = whole[:cut]
        assert find_head_end(first) == -1
        assert find_head_end(whole, max(0, len(first) - 3)) == len(whole)


def test_leading_empty_lines() -> None:
    assert leading_empty_lines(b"\r\n\n\r\nGET") == 5
    assert leading_empty_lines(b"GET / \r\n") == 0
    assert leading_empty_lines(b"\r") == 0
    assert leading_empty_lines(b"") == 0


# ======================================================= encode_response


def test_encode_response_exact_bytes() -> None:
    data = encode_response(Response.text("héllo"), keep_alive=True, date=DATE)
    assert data == (
        b"HTTP/1.1 200 OK\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: 6\r\n"
        b"Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n"
        b"Connection: keep-alive\r\n"
        b"X-Content-Type-Options: nosniff\r\n"
        b"Cache-Control: no-store\r\n"
        b"Referrer-Policy: no-referrer\r\n"
        b"X-Frame-Options: DENY\r\n"
        b"\r\n"
        b"h\xc3\xa9llo")


def test_encode_response_head_only_keeps_content_length() -> None:
    full = encode_response(Response.json({"a": 1}), keep_alive=False, date=DATE)
    only = encode_response(Response.json({"a": 1}), keep_alive=False, head_only=True, date=DATE)
    assert full == only + b'{"a":1}'
    assert b"\r\nContent-Length: 7\r\n" in only
    assert b"\r\nConnection: close\r\n" in only
    assert only.endswith(b"\r\n\r\n")


@pytest.mark.parametrize("status", [100, 101, 204, 304])
def test_bodyless_statuses_carry_no_body_nor_length(status: int) -> None:
    data = encode_response(Response(status, b"ignored"), keep_alive=True, date=DATE)
    assert data.startswith(f"HTTP/1.1 {status} ".encode())
    assert data.endswith(b"\r\n\r\n")
    assert b"ignored" not in data
    assert b"\r\nContent-Length:" not in data
    assert b"\r\nContent-Type:" not in data


def test_response_headers_follow_ours_and_override_defaults() -> None:
    response = Response.html("<p>", status=201)
    response.headers += [("Cache-Control", "no-cache"), ("Set-Cookie", "a=1"),
                         ("Set-Cookie", "b=2"), ("x-frame-options", "SAMEORIGIN"),
                         ("Content-Type", "text/x-special"), ("Date", "then")]
    lines = encode_response(response, keep_alive=True, date=DATE).split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 201 Created"
    assert lines[1:] == [
        b"Content-Length: 3",
        b"Connection: keep-alive",
        b"Cache-Control: no-cache",
        b"Set-Cookie: a=1",
        b"Set-Cookie: b=2",
        b"x-frame-options: SAMEORIGIN",
        b"Content-Type: text/x-special",
        b"Date: then",
        b"X-Content-Type-Options: nosniff",
        b"Referrer-Policy: no-referrer",
        b"",
        b"<p>",
    ]


def test_default_date_is_imf_fixdate() -> None:
    data = encode_response(Response(), keep_alive=True)
    assert re.search(rb"\r\nDate: (Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d "
                     rb"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} "
                     rb"\d\d:\d\d:\d\d GMT\r\n", data)


def test_unknown_status_has_empty_reason() -> None:
    assert encode_response(Response(599), keep_alive=True).startswith(b"HTTP/1.1 599 \r\n")


@pytest.mark.parametrize("headers", [
    [("X-A", "a\r\nSet-Cookie: evil=1")],
    [("X-A", "a\nb")],
    [("X-A", "a\rb")],
    [("X-A", "a\x00b")],
    [("X-A\r\nEvil", "1")],
    [("X A", "1")],
    [("", "1")],
    [("X-A", "snow ☃")],
    [("Content-Length", "1")],
    [("transfer-encoding", "chunked")],
    [("Connection", "upgrade")],
])
def test_encode_response_refuses_bad_headers(headers: list[tuple[str, str]]) -> None:
    with pytest.raises(ValueError):
        encode_response(Response(headers=headers), keep_alive=True)


def test_encode_response_refuses_crlf_in_content_type_and_bad_status() -> None:
    with pytest.raises(ValueError):
        encode_response(Response(content_type="text/html\r\nX: y"), keep_alive=True)
    for status in (99, 600, 0):
        with pytest.raises(ValueError):
            encode_response(Response(status), keep_alive=True)


def test_response_constructors() -> None:
    assert Response.text("hi", status=201) == Response(201, b"hi", "text/plain; charset=utf-8")
    assert Response.html("<b>é</b>") == Response(200, "<b>é</b>".encode(),
                                                 "text/html; charset=utf-8")
    assert Response.json({"b": [1, "é"], "a": None}, status=202) == Response(
        202, '{"b":[1,"é"],"a":null}'.encode(), "application/json")
    assert Response.redirect("/login") == Response(303, b"", headers=[("Location", "/login")])
    assert Response.redirect("/x", status=302).status == 302
    assert Response.error(404, "no such\r\npage") == Response(404, b"no such  page")


def test_response_json_refuses_nan_and_redirect_refuses_crlf() -> None:
    with pytest.raises(ValueError):
        Response.json({"x": float("nan")})
    with pytest.raises(ValueError):
        Response.redirect("/a\r\nSet-Cookie: x=1")


def test_security_header_defaults() -> None:
    assert dict(SECURITY_HEADERS) == {"X-Content-Type-Options": "nosniff",
                                      "Cache-Control": "no-store",
                                      "Referrer-Policy": "no-referrer",
                                      "X-Frame-Options": "DENY"}


# ================================================================ server


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


def split_replies(data: bytes) -> list[Reply]:
    """Every response in ``data``, framed by Content-Length as a client would."""
    replies = []
    while data:
        end = data.index(b"\r\n\r\n") + 4
        status_line, *lines = data[:end - 4].decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(": ")
            assert name.lower() not in headers, f"repeated {name}"
            headers[name.lower()] = value
        length = int(headers.get("content-length", "0"))
        replies.append(Reply(int(status_line.split(" ")[1]), headers, data[end:end + length]))
        data = data[end + length:]
    return replies


def read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def read_reply(sock: socket.socket) -> Reply:
    """One response from a connection that stays open."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed after {data!r}"
        data += chunk
    length = int(re.search(rb"Content-Length: (\d+)", data).group(1))  # type: ignore[union-attr]
    while len(data) < data.index(b"\r\n\r\n") + 4 + length:
        data += sock.recv(65536)
    [reply] = split_replies(data)
    return reply


def connect(port: int, timeout: float = 5.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def exchange(port: int, data: bytes) -> list[Reply]:
    """Send ``data``, read until the server closes, return its responses."""
    with connect(port) as sock:
        sock.sendall(data)
        return split_replies(read_until_closed(sock))


async def echo(request: Request) -> Response:
    """The test application: describes the request it got, fails on demand."""
    if request.path == "/boom":
        raise RuntimeError("secret detail of the failure")
    if request.path == "/hang":
        await asyncio.Event().wait()
    if request.path == "/split":
        return Response(headers=[("X-A", "a\r\nSet-Cookie: evil=1")])
    if request.path == "/timeout-inside":
        raise TimeoutError("the handler's own timeout")
    if request.path == "/none":
        return None  # type: ignore[return-value]
    return Response.json({"method": request.method, "path": request.path,
                          "query": request.query, "body": request.body.decode("latin-1"),
                          "port": request.client[1], "version": request.version})


Serve = Callable[..., LoopThread]


@pytest.fixture
def serve() -> Iterator[Serve]:
    """Factory: ``serve(**options)`` -> a started HttpServer on 127.0.0.1 port 0 in a loop
    thread. At teardown: the server closes, and neither asyncio (task exceptions never
    retrieved, callbacks that raised) nor the GC (unclosed sockets) complained."""
    started: list[LoopThread] = []
    complaints: list[dict[str, Any]] = []

    def start(handler: Any = echo, **options: Any) -> LoopThread:
        thread = LoopThread(HttpServer([("127.0.0.1", 0)], handler, **options))
        thread.call(thread.loop.set_exception_handler,
                    lambda loop, context: complaints.append(context))
        started.append(thread)
        return thread

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        yield start
        for thread in started:
            thread.close()
        gc.collect()
    assert complaints == []
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []


def stats(thread: LoopThread) -> dict[str, int]:
    return thread.call(lambda: dict(vars(thread.server.stats)))


def test_start_reports_bound_ephemeral_ports(serve: Serve) -> None:
    thread = serve()
    server = thread.server
    assert server.bound[0][0] == "127.0.0.1"
    assert server.bound[0][1] > 0
    two = LoopThread(HttpServer([("127.0.0.1", 0), ("127.0.0.1", 0)], echo))
    try:
        ports = [port for _, port in two.server.bound]
        assert len(set(ports)) == 2
        for port in ports:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/p", timeout=5) as reply:
                assert json.loads(reply.read())["path"] == "/p"
    finally:
        two.close()


def test_http_client_get_post_head(serve: Serve) -> None:
    thread = serve()
    conn = http.client.HTTPConnection("127.0.0.1", thread.port, timeout=5)
    try:
        conn.request("GET", "/hello/w%C3%B6rld?x=1&x=2")
        reply = conn.getresponse()
        body = reply.read()
        assert reply.status == 200
        assert reply.getheader("Content-Type") == "application/json"
        assert reply.getheader("X-Content-Type-Options") == "nosniff"
        assert reply.getheader("Connection") == "keep-alive"
        assert json.loads(body) == {"method": "GET", "path": "/hello/wörld",
                                    "query": {"x": ["1", "2"]}, "body": "",
                                    "port": conn.sock.getsockname()[1], "version": "HTTP/1.1"}

        conn.request("POST", "/submit", body=b"a=1&b=\xff",
                     headers={"Content-Type": "application/x-www-form-urlencoded"})
        reply = conn.getresponse()
        assert reply.status == 200
        assert json.loads(reply.read())["body"] == "a=1&b=\xff"

        conn.request("HEAD", "/hello/w%C3%B6rld?x=1&x=2")
        reply = conn.getresponse()
        assert reply.status == 200
        assert reply.read() == b""
        # the length GET would have had: the echoed method is one letter longer
        assert reply.getheader("Content-Length") == str(len(body) + 1)
    finally:
        conn.close()
    assert stats(thread) == {"requests": 3, "errors_4xx": 0, "errors_5xx": 0,
                             "connections": 1, "rejected": 0}


def test_urllib_post_with_body(serve: Serve) -> None:
    thread = serve()
    request = urllib.request.Request(f"http://127.0.0.1:{thread.port}/form", data=b"x" * 5000,
                                     method="PUT")
    with urllib.request.urlopen(request, timeout=5) as reply:
        assert reply.status == 200
        got = json.loads(reply.read())
    assert (got["method"], got["body"]) == ("PUT", "x" * 5000)


def test_keep_alive_reuses_one_connection_for_three_requests(serve: Serve) -> None:
    thread = serve()
    conn = http.client.HTTPConnection("127.0.0.1", thread.port, timeout=5)
    try:
        ports = []
        for n in range(3):
            conn.request("GET", f"/n{n}")
            reply = conn.getresponse()
            got = json.loads(reply.read())
            assert got["path"] == f"/n{n}"
            ports.append(got["port"])
        assert ports == [conn.sock.getsockname()[1]] * 3
    finally:
        conn.close()
    assert stats(thread)["connections"] == 1


def test_pipelined_requests_in_one_send_are_answered_in_order(serve: Serve) -> None:
    thread = serve()
    data = (head("GET /one", "Host: h")
            + head("POST /two", "Host: h", "Content-Length: 5") + b"hello"
            + b"\r\n"  # an empty line between requests is ignored (RFC 9112 2.2)
            + head("GET /three", "Host: h", "Connection: close"))
    replies = exchange(thread.port, data)
    assert [r.status for r in replies] == [200, 200, 200]
    bodies = [json.loads(r.body) for r in replies]
    assert [b["path"] for b in bodies] == ["/one", "/two", "/three"]
    assert bodies[1]["body"] == "hello"
    assert [r.headers["connection"] for r in replies] == ["keep-alive", "keep-alive", "close"]


@pytest.mark.parametrize("request_head", [
    head("GET /", "Host: h", "Connection: close"),
    head("GET /", version="HTTP/1.0"),
])
def test_connection_close_is_honoured(serve: Serve, request_head: bytes) -> None:
    thread = serve()
    [reply] = exchange(thread.port, request_head)  # exchange reads until the server closes
    assert reply.status == 200
    assert reply.headers["connection"] == "close"


def test_http10_keep_alive_keeps_the_connection(serve: Serve) -> None:
    thread = serve()
    with connect(thread.port) as sock:
        sock.sendall(head("GET /a", "Connection: keep-alive", version="HTTP/1.0"))
        reply = read_reply(sock)
        assert reply.headers["connection"] == "keep-alive"
        sock.sendall(head("GET /b", version="HTTP/1.0"))
        [last] = split_replies(read_until_closed(sock))
    assert json.loads(last.body)["path"] == "/b"
    assert last.headers["connection"] == "close"


def test_max_requests_per_connection_closes_after_the_last(serve: Serve) -> None:
    thread = serve(max_requests_per_connection=2)
    replies = exchange(thread.port, head("GET /1", "Host: h") * 3)
    assert [r.headers["connection"] for r in replies] == ["keep-alive", "close"]


def assert_refused(replies: list[Reply], status: int) -> Reply:
    """One plain-text one-line error with Connection: close (the server then closed)."""
    [reply] = replies
    assert reply.status == status
    assert reply.headers["connection"] == "close"
    assert reply.headers["content-type"] == "text/plain; charset=utf-8"
    assert reply.body and b"\n" not in reply.body
    return reply


def test_oversized_head_gets_431(serve: Serve) -> None:
    thread = serve(max_head=1024)
    big = head("GET /", "Host: h", "X-Big: " + "b" * 2000)
    assert_refused(exchange(thread.port, big), 431)
    # a head that never ends is refused as soon as it is too long
    assert_refused(exchange(thread.port, b"GET / HTTP/1.1\r\nX: " + b"y" * 5000), 431)
    # exactly at the limit is fine
    at_limit = head("GET /", "Host: h", "Connection: close", "X-Pad: ")
    at_limit = at_limit[:-4] + b"p" * (1024 - len(at_limit)) + b"\r\n\r\n"
    assert len(at_limit) == 1024
    assert [r.status for r in exchange(thread.port, at_limit)] == [200]
    assert stats(thread)["errors_4xx"] == 2


def test_oversized_body_gets_413_without_being_read(serve: Serve) -> None:
    # The body is never sent: a server that waited for it would answer 408 after
    # body_timeout (5 s, past the client's 3 s timeout) instead of 413 at once.
    thread = serve(max_body=100, body_timeout=5.0)
    with connect(thread.port, timeout=3.0) as sock:
        sock.sendall(head("POST /", "Host: h", "Content-Length: 1000000"))
        reply = assert_refused(split_replies(read_until_closed(sock)), 413)
    assert reply.body == b"content too large"
    # max_body itself is accepted
    data = head("POST /", "Host: h", "Content-Length: 100", "Connection: close") + b"z" * 100
    assert json.loads(exchange(thread.port, data)[0].body)["body"] == "z" * 100


def test_oversized_body_sent_anyway_still_gets_413(serve: Serve) -> None:
    """The server lingers (half-close, discard) so that its answer is not lost: closing
    with unread input resets the connection, and a client still sending then gets a
    broken pipe instead of the 413 (seen with this size when the server did not linger)."""
    thread = serve(max_body=100)
    data = head("POST /", "Host: h", "Content-Length: 900000") + b"q" * 900000
    assert_refused(exchange(thread.port, data), 413)


@pytest.mark.parametrize(("data", "status"), [
    (head("POST /", "Host: h", "Transfer-Encoding: chunked") + b"5\r\nhello\r\n0\r\n\r\n", 501),
    (b"\x00\xff\xfe garbage \x01\r\n\r\n", 400),
    (b"hello\r\n\r\n", 400),
    (head("GET /", "Host: h", "Bad Header: 1"), 400),
    (head("BREW /pot", "Host: h"), 501),
    (head("GET /", "Host: h", version="HTTP/2.0"), 505),
    (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: h\r\n\r\n", 414),
])
def test_refused_requests_get_their_status_and_a_close(serve: Serve, data: bytes,
                                                       status: int) -> None:
    thread = serve()
    assert_refused(exchange(thread.port, data), status)


def test_refusal_after_a_good_request_on_the_same_connection(serve: Serve) -> None:
    thread = serve()
    replies = exchange(thread.port, head("GET /ok", "Host: h") + b"NOT HTTP\r\n\r\n")
    assert [r.status for r in replies] == [200, 400]
    assert stats(thread)["requests"] == 2
    assert stats(thread)["errors_4xx"] == 1


def test_slow_loris_head_gets_408(serve: Serve) -> None:
    thread = serve(head_timeout=0.3, idle_timeout=30.0)
    with connect(thread.port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: h\r\n")  # ... and never the blank line
        reply = assert_refused(split_replies(read_until_closed(sock)), 408)
    assert reply.body == b"request timeout"


def test_slow_body_gets_408(serve: Serve) -> None:
    thread = serve(body_timeout=0.3)
    with connect(thread.port) as sock:
        sock.sendall(head("POST /", "Host: h", "Content-Length: 10") + b"abc")
        assert_refused(split_replies(read_until_closed(sock)), 408)


def test_idle_connection_is_closed_silently(serve: Serve) -> None:
    thread = serve(idle_timeout=0.3, head_timeout=30.0)
    with connect(thread.port) as sock:  # never sends a byte
        assert read_until_closed(sock) == b""
    with connect(thread.port) as sock:  # idle after one request
        sock.sendall(head("GET /", "Host: h"))
        assert read_reply(sock).status == 200
        assert read_until_closed(sock) == b""
    assert stats(thread)["requests"] == 1


def test_expect_100_continue(serve: Serve) -> None:
    thread = serve()
    with connect(thread.port) as sock:
        sock.sendall(head("POST /e", "Host: h", "Content-Length: 4", "Expect: 100-continue",
                          "Connection: close"))
        interim = b""
        while not interim.endswith(b"\r\n\r\n"):
            interim += sock.recv(1)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"data")
        [reply] = split_replies(read_until_closed(sock))
    assert json.loads(reply.body)["body"] == "data"
    refused = exchange(thread.port, head("POST /", "Host: h", "Content-Length: 1",
                                         "Expect: teapot"))
    assert_refused(refused, 417)


def test_handler_exception_gets_500_without_details(serve: Serve,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    thread = serve()
    with caplog.at_level(logging.ERROR, logger="hs100local.web"), connect(thread.port) as sock:
        sock.sendall(head("GET /boom", "Host: h"))
        reply = read_reply(sock)
        assert (reply.status, reply.body) == (500, b"internal error")
        sock.sendall(head("GET /after", "Host: h", "Connection: close"))
        rest = read_until_closed(sock)
    assert b"secret" not in rest and b"Traceback" not in rest
    assert json.loads(split_replies(rest)[0].body)["path"] == "/after"
    failures = [r for r in caplog.records if r.name == "hs100local.web"]
    assert len(failures) == 1
    assert failures[0].exc_info is not None
    assert "secret detail" in str(failures[0].exc_info[1])
    assert stats(thread)["errors_5xx"] == 1
    with urllib.request.urlopen(f"http://127.0.0.1:{thread.port}/new", timeout=5) as ok:
        assert ok.status == 200


@pytest.mark.parametrize("path", ["/split", "/timeout-inside", "/none"])
def test_bad_handler_results_are_500(serve: Serve, path: str,
                                     caplog: pytest.LogCaptureFixture) -> None:
    thread = serve()
    with caplog.at_level(logging.ERROR, logger="hs100local.web"):
        replies = exchange(thread.port, head(f"GET {path}", "Host: h", "Connection: close"))
    [reply] = replies
    assert (reply.status, reply.body) == (500, b"internal error")
    assert "set-cookie" not in reply.headers and "x-a" not in reply.headers
    assert len([r for r in caplog.records if r.name == "hs100local.web"]) == 1


def test_handler_timeout_gets_503_and_the_connection_goes_on(serve: Serve) -> None:
    thread = serve(handler_timeout=0.2)
    replies = exchange(thread.port, head("GET /hang", "Host: h")
                       + head("GET /next", "Host: h", "Connection: close"))
    assert [r.status for r in replies] == [503, 200]
    assert stats(thread)["errors_5xx"] == 1


def test_connections_over_the_cap_get_503(serve: Serve) -> None:
    thread = serve(max_connections=1)
    with connect(thread.port) as first:
        first.sendall(head("GET /", "Host: h"))
        assert read_reply(first).status == 200  # the first connection is open and counted
        with connect(thread.port) as second:
            rejected = split_replies(read_until_closed(second))
        [reply] = rejected
        assert reply.status == 503
        assert reply.headers["connection"] == "close"
        assert reply.headers["retry-after"] == "1"
        first.sendall(head("GET /still", "Host: h"))
        assert read_reply(first).status == 200
    assert stats(thread) == {"requests": 3, "errors_4xx": 0, "errors_5xx": 1,
                             "connections": 1, "rejected": 1}


# ------------------------------------------------------ in-loop (asyncio.run)


async def _get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> bytes:
    writer.write(head(f"GET {path}", "Host: h"))
    got = await reader.readuntil(b"\r\n\r\n")
    length = int(re.search(rb"Content-Length: (\d+)", got).group(1))  # type: ignore[union-attr]
    return got + await reader.readexactly(length)


def test_close_with_an_open_idle_connection_is_prompt() -> None:
    async def main() -> tuple[float, bytes, int]:
        server = await HttpServer([("127.0.0.1", 0)], echo, idle_timeout=30.0).start()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.bound[0][1])
        assert (await _get(reader, writer, "/")).startswith(b"HTTP/1.1 200 OK\r\n")
        loop = asyncio.get_running_loop()
        began = loop.time()
        await server.close()
        elapsed = loop.time() - began
        rest = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        await writer.wait_closed()
        return elapsed, rest, server.open_connections

    elapsed, rest, still_open = asyncio.run(main())
    assert elapsed < 1.0
    assert rest == b""
    assert still_open == 0


def test_close_cancels_a_running_handler_and_waits_for_it() -> None:
    entered = asyncio.Event()
    cancelled: list[bool] = []

    async def slow(request: Request) -> Response:
        entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            for _ in range(50):  # unwinding takes loop turns (a DB, a plug)
                await asyncio.sleep(0)
            cancelled.append(True)
            raise
        return Response()  # pragma: no cover

    async def main() -> None:
        server = await HttpServer([("127.0.0.1", 0)], slow).start()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.bound[0][1])
        writer.write(head("GET /", "Host: h"))
        await asyncio.wait_for(entered.wait(), 5)
        await asyncio.wait_for(server.close(), 1.5)
        assert cancelled == [True]  # close() waited for the handler to unwind
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        await writer.wait_closed()

    asyncio.run(main())
    assert cancelled == [True]


def test_client_that_does_not_read_is_dropped() -> None:
    called = asyncio.Event()

    async def big(request: Request) -> Response:
        called.set()
        return Response(body=b"x" * (16 << 20))  # more than the kernel buffers on loopback

    async def main() -> bool:
        server = await HttpServer([("127.0.0.1", 0)], big, idle_timeout=0.3).start()
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(server.bound[0])  # completes in the kernel's backlog
            sock.sendall(head("GET /", "Host: h"))  # and the answer is never read
            await asyncio.wait_for(called.wait(), 5)
            [task] = server._connections
            done, _ = await asyncio.wait({task}, timeout=5)
            await server.close()
        return task in done

    assert asyncio.run(main())
