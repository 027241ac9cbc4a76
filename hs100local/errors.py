"""Exception types shared by every layer.

Each error carries the CLI exit code it maps to, so the CLI never has to guess:
1 = the plug answered with an error, 2 = usage, 3 = unreachable/timeout/protocol.
``retryable`` tells the transports which failures may be retried: timeouts and
connections lost half-way (the plug is there but busy or flaky), never refused or
unreachable hosts (retrying those only delays the inevitable error).
"""

from __future__ import annotations

import errno


def one_line(text: str) -> str:
    """Escape newlines and control characters: a plug's err_msg or alias, a DNS name or
    an SNI from the network must not split a one-line message or log line, nor send
    escape sequences to a terminal."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


class Hs100Error(Exception):
    """Base class for all hs100local errors."""

    exit_code = 3
    retryable = False
    #: the socket errno behind it, when there was one (a sweep tells "refused" = a
    #: host is there with the port closed, from "no route" = nobody)
    os_errno: int | None = None


class UnreachableError(Hs100Error):
    """The plug cannot be reached: refused, no route, unknown host."""


class PlugTimeoutError(Hs100Error):
    """The plug did not connect or answer within the timeout."""

    retryable = True


class ConnectionLostError(Hs100Error):
    """The connection was reset or closed before a whole reply arrived."""

    retryable = True


class ProtocolError(Hs100Error):
    """The peer sent something that is not the plug protocol (bad length, not JSON)."""


class StoreError(Hs100Error):
    """The local database (plug inventory, events) cannot be opened or written."""


class DeviceError(Hs100Error):
    """The plug answered, with a non-zero ``err_code`` for a module or method."""

    exit_code = 1

    def __init__(self, module: str, method: str | None, code: int, message: str) -> None:
        self.module = module
        self.method = method
        self.code = code
        self.message = message
        where = f"{module}.{method}" if method else module
        super().__init__(f"plug answered error {code} for {where}: {message or 'no message'}")


class NotAppliedError(Hs100Error):
    """The plug accepted a change but reads back something else (a clock that did not
    move, a zone it kept, an alias it truncated): the change did not take."""

    exit_code = 1


class TargetError(Hs100Error):
    """A selector (outlet index/id/alias, host) does not name anything usable."""

    exit_code = 2


# errno values that mean "there is nobody to talk to": never retried.
_UNREACHABLE_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.EHOSTDOWN,
        errno.EADDRNOTAVAIL,
        errno.ENETDOWN,
    }
)


def classify_os_error(exc: OSError, where: str) -> Hs100Error:
    """Map an ``OSError`` from a socket call to the matching hs100local error."""
    error = _classify(exc, where)
    error.os_errno = exc.errno
    return error


def _classify(exc: OSError, where: str) -> Hs100Error:
    if isinstance(exc, TimeoutError):
        return PlugTimeoutError(f"timed out {where}")
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
        return ConnectionLostError(f"connection lost {where}: {exc.strerror or exc}")
    if exc.errno in _UNREACHABLE_ERRNOS or isinstance(exc, ConnectionRefusedError):
        return UnreachableError(f"cannot connect {where}: {exc.strerror or exc}")
    if exc.errno is None:  # e.g. socket.gaierror subclasses carry their own codes
        return UnreachableError(f"cannot connect {where}: {exc}")
    return UnreachableError(f"network error {where}: {exc.strerror or exc}")
