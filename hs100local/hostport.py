"""Where a plug is and how long to wait for it: ``HOST[:PORT]`` arguments (IPv4,
names, ``[IPv6]:PORT``), the transports' shared :class:`Endpoint`, and the
:class:`Budget` that bounds one command's whole wait on the network."""

from __future__ import annotations

from hs100local.errors import TargetError
from hs100local.protocol import MAX_MESSAGE

DEFAULT_PORT = 9999
DEFAULT_TIMEOUT = 5.0


class Budget:
    """The time one command may spend waiting on the network, all steps together.

    ``--timeout 1`` means the user waits about a second for an answer, not a second
    per connect, per retry and per search. Every network wait is charged here
    (:meth:`charge`), pauses between steps are not (``time sync`` waits for the
    start of a second on purpose); each wait is capped at :meth:`remaining`.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.spent = 0.0

    def remaining(self) -> float:
        return self.seconds - self.spent

    def cap(self, wait: float) -> float:
        """``wait``, shortened to what is left (never below zero)."""
        return max(min(wait, self.remaining()), 0.0)

    def charge(self, seconds: float) -> None:
        self.spent += max(seconds, 0.0)


class Endpoint:
    """Where a plug is and how patiently to talk to it; shared by both transports so
    the asyncio and the blocking one cannot drift apart in their defaults."""

    def __init__(
        self,
        host: str,
        port: int = DEFAULT_PORT,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float | None = None,
        retries: int = 1,
        limit: int = MAX_MESSAGE,
        budget: Budget | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.connect_timeout = timeout if connect_timeout is None else connect_timeout
        self.retries = retries
        self.limit = limit
        #: the whole command's network time (the blocking transport honours it)
        self.budget = budget

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"


def parse_hostport(text: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """Split ``HOST[:PORT]``; a bare IPv6 address (several colons) has no port."""
    text = text.strip()
    if not text:
        raise TargetError("empty host")
    host, port_text = text, ""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise TargetError(f"unbalanced '[' in host {text!r}")
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise TargetError(f"unexpected text after ']' in {text!r}")
            port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    if not host:
        raise TargetError(f"no host in {text!r}")
    if not port_text:
        return host, default_port
    if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
        raise TargetError(f"invalid port {port_text!r} in {text!r}")
    return host, int(port_text)
