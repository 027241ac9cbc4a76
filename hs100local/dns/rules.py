"""Sinkhole rules: which names never leave the network, and what they get instead.

A rule names a DNS suffix matched **label by label**: ``tplinkcloud.com`` covers
``n-devs.tplinkcloud.com`` and ``tplinkcloud.com`` itself, never
``eviltplinkcloud.com``. The longest matching suffix wins, so a specific rule can
override a broad one. Names are compared in lower case without the final dot.

Modes:

* ``redirect`` – A = the companion's address (on the interface the query came in
  on) or the rule's address: the plug connects to our TLS listener, which logs it;
* ``ntp`` – the same for time-server names, so plugs get time from our NTP server;
* ``null`` – A = 0.0.0.0;  ``nodata`` – NOERROR, no answer;  ``nxdomain``.

Every other query type for a sinkholed name gets NOERROR with no answer and an SOA
(never forwarded: a TXT or HTTPS query must not leak the name upstream either).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from hs100local.errors import TargetError

MODES = ("redirect", "ntp", "null", "nodata", "nxdomain")
DEFAULT_TTL = 60

#: the vendor's cloud and firmware names, and the time servers plugs ask (plug-facts)
CLOUD_SUFFIXES = ("tplinkcloud.com", "tplinkra.com")
NTP_SUFFIXES = ("pool.ntp.org", "time.nist.gov", "time-a.nist.gov", "time-b.nist.gov",
                "time.edu.cn")


def normalize_name(name: str) -> str:
    """``N-Devs.TPLinkCloud.com.`` -> ``n-devs.tplinkcloud.com``; raises on empty labels."""
    text = name.strip().rstrip(".").lower()
    if not text or any(not label for label in text.split(".")):
        raise TargetError(f"not a DNS name: {name!r}")
    if any(len(label) > 63 for label in text.split(".")) or len(text) > 253:
        raise TargetError(f"DNS name too long: {name!r}")
    return text


@dataclass(frozen=True)
class Rule:
    suffix: str
    mode: str = "redirect"
    address: str | None = None  # fixed A for redirect/ntp; None = our own address

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise TargetError(f"unknown sinkhole mode {self.mode!r} (one of {', '.join(MODES)})")
        if self.address is not None:
            if self.mode not in ("redirect", "ntp"):
                raise TargetError(f"mode {self.mode} takes no address")
            try:
                ipaddress.IPv4Address(self.address)
            except ValueError:
                raise TargetError(f"not an IPv4 address: {self.address!r}") from None

    def __str__(self) -> str:
        text = f"{self.suffix}={self.mode}"
        return f"{text}:{self.address}" if self.address else text


def parse_rule(text: str) -> Rule:
    """``NAME``, ``NAME=MODE`` or ``NAME=MODE:ADDRESS`` (redirect/ntp only)."""
    name, _, rest = text.partition("=")
    suffix = normalize_name(name)
    if not rest:
        mode = "ntp" if suffix in NTP_SUFFIXES else "redirect"
        return Rule(suffix, mode)
    mode, _, address = rest.partition(":")
    return Rule(suffix, mode.strip().lower(), address.strip() or None)


def default_rules() -> list[Rule]:
    return [Rule(s, "redirect") for s in CLOUD_SUFFIXES] + [Rule(s, "ntp") for s in NTP_SUFFIXES]


class Sinkhole:
    """The rule set; :meth:`match` costs one dict lookup per label of the name."""

    def __init__(self, rules: Iterable[Rule] = (), ttl: int = DEFAULT_TTL) -> None:
        self.ttl = ttl
        self.rules: dict[str, Rule] = {}
        for rule in rules:
            self.rules[normalize_name(rule.suffix)] = rule  # a later rule for a name wins

    def match(self, name: str) -> Rule | None:
        """The rule for ``name`` (any case, with or without the final dot), or None."""
        text = name.rstrip(".").lower()
        rules = self.rules
        while True:
            rule = rules.get(text)
            if rule is not None:
                return rule
            dot = text.find(".")
            if dot < 0:
                return None
            text = text[dot + 1 :]
