"""The `serve` configuration: one TOML file whose keys are the command-line flags' names.

Why flat keys named like the flags: a user who has run ``hs100local serve --dns
192.168.1.2:53 --upstream 192.168.1.1`` writes the same words into the file
(``dns = "192.168.1.2:53"``), and a flag given on the command line overrides
exactly the key of the same name. Every value is checked when the file is read,
and an error names the key and says what was wanted, so a typo stops the daemon
at start (or is refused by a SIGHUP reload, keeping the running settings) instead
of surfacing hours later.

Without a file the defaults are a demo on unprivileged loopback ports.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from hs100local.errors import TargetError
from hs100local.hostport import parse_hostport

Address = tuple[str, int]

#: where the service files and the commands that need the companion's addresses look
DEFAULT_PATH = Path("/etc/hs100local/hs100local.toml")
DEMO_DNS = ("127.0.0.1", 5353)
DEMO_NTP = ("127.0.0.1", 1123)
DEMO_CLOUD = (("127.0.0.1", 8443), ("127.0.0.1", 50443))
DEFAULT_WEB_PORT = 8099
CLOUD_MODES = ("handshake", "log", "reset")
LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(ValueError):
    """A bad value; the message names the key (and the file)."""


@dataclass(frozen=True)
class WebConfig:
    """The ``[web]`` table: the dashboard, off unless ``listen`` is given.

    Beyond loopback it needs a ``token`` (a bearer token; browsers log in with it
    once and get a cookie) or ``user`` and ``password`` (HTTP basic auth); the
    file holding them should be readable by root only. ``refresh`` is how often
    (seconds) the dashboard asks every plug for its state, clock and cloud status.
    """

    listen: tuple[Address, ...] = ()
    token: str | None = field(default=None, repr=False)
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    refresh: float = 60.0

    @property
    def auth(self) -> str:
        """"token", "basic" or "none"."""
        return "token" if self.token else "basic" if self.user else "none"

    @property
    def loopback_only(self) -> bool:
        return all(ipaddress.IPv4Address(host).is_loopback for host, _port in self.listen)


WEB_KEYS = ("listen", "token", "token-file", "user", "password", "refresh")
#: a token shorter than this is refused: it guards switching every plug in the house
MIN_TOKEN = 16
MIN_PASSWORD = 8


def _web(value: Any, source: str | None, base: WebConfig) -> WebConfig:
    """The ``[web]`` table on top of ``base`` (a flag changes one key, keeps the rest)."""
    where = _where(source, "web")
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: want a table, e.g. [web] listen = \"127.0.0.1:8099\"")
    values: dict[str, Any] = {}
    for key, item in value.items():
        at = f"{where}.{key}"
        if key == "listen":
            values["listen"] = _addresses(item, DEFAULT_WEB_PORT, at, off=True)
        elif key in ("token", "user", "password"):
            if not isinstance(item, str) or not item or any(c in item for c in "\r\n"):
                raise ConfigError(f"{at}: want a non-empty one-line string")
            values[key] = item
        elif key == "token-file":
            values["token"] = _secret_file(item, at)
        elif key == "refresh":
            values["refresh"] = _number(item, at, 5)
        else:
            raise ConfigError(f"{at}: unknown key (known: {', '.join(WEB_KEYS)})")
    if "listen" not in values and not base.listen:
        values["listen"] = (("127.0.0.1", DEFAULT_WEB_PORT),)  # a [web] table turns it on
    web = replace(base, **values)
    if web.token is not None and (len(web.token) < MIN_TOKEN or not web.token.isascii()
                                  or not all(c.isprintable() and not c.isspace()
                                             for c in web.token)):
        raise ConfigError(f"{where}.token: want at least {MIN_TOKEN} printable ASCII "
                          "characters without spaces (make one with: openssl rand -hex 16)")
    if web.password is not None and len(web.password) < MIN_PASSWORD:
        raise ConfigError(f"{where}.password: want at least {MIN_PASSWORD} characters")
    if (web.user is None) != (web.password is None):
        raise ConfigError(f"{where}: 'user' and 'password' go together (basic auth)")
    if web.token is not None and web.user is not None:
        raise ConfigError(f"{where}: give a token or user and password, not both")
    if web.listen and not web.loopback_only and web.auth == "none":
        raise ConfigError(f"{where}.listen: beyond loopback the dashboard needs a 'token' "
                          "or 'user' and 'password': it can switch every plug")
    return web


def _secret_file(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: want a file name")
    try:
        with open(value, encoding="utf-8") as f:
            text = f.read(4096).strip()
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {value}: {exc.strerror or exc}") from None
    if not text or "\n" in text:
        raise ConfigError(f"{where}: {value} must hold the token on one line")
    return text


@dataclass(frozen=True)
class ServeConfig:
    """Everything ``serve`` runs with; field names are the keys with '-' as '_'."""

    dns: tuple[Address, ...] = (DEMO_DNS,)  # () = --no-dns
    ntp: tuple[Address, ...] = (DEMO_NTP,)
    cloud: tuple[Address, ...] = DEMO_CLOUD
    upstream: tuple[Address, ...] = ()  # () = /etc/resolv.conf
    db: str | None = None  # None = HS100LOCAL_DB or the user data dir
    assume_synced: bool = False
    # DNS
    allow: tuple[str, ...] = ()  # CIDRs; () = loopback + the listen networks
    sinkhole: tuple[str, ...] = ()  # NAME[=MODE[:ADDR]], added to the defaults
    default_rules: bool = True
    ttl: int = 60
    dns_rate_limit: float = 200.0
    # NTP
    stratum: int = 3
    ntp_rate_limit: float = 1.0
    # cloud listener
    cloud_mode: str = "handshake"
    cloud_rate_limit: float = 10.0
    # events
    retention_days: float = 30.0
    max_db_mb: float = 500.0
    # time keeper and discovery (seconds between passes; 0 = off)
    time_interval: float = 300.0
    time_threshold: float = 2.0
    zone: str | None = None  # IANA name or index 0-109; None = this host's
    zones: tuple[tuple[str, int], ...] = ()  # per plug (alias or MAC) zone index
    discover_interval: float = 3600.0
    interfaces: tuple[str, ...] = ()
    # process
    user: str | None = None  # drop to this user after binding (when started as root)
    log_level: str = "info"
    web: WebConfig = WebConfig()
    source: str | None = field(default=None, compare=False)  # the file read, for messages

    @property
    def key_names(self) -> list[str]:
        return [f.name.replace("_", "-") for f in fields(self) if f.name != "source"]


def _where(source: str | None, key: str) -> str:
    return f"{source}: key '{key}'" if source else f"'{key}'"


def _address(value: Any, default_port: int, where: str) -> Address:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: want \"ADDR:PORT\" strings, got {value!r}")
    try:
        if value.endswith(":0"):
            host, port = value[:-2], 0
        else:
            host, port = parse_hostport(value, default_port)
        ipaddress.IPv4Address(host)
    except (TargetError, ValueError):
        raise ConfigError(f"{where}: {value!r} is not IPv4ADDR[:PORT]") from None
    return host, port


def _addresses(value: Any, default_port: int, where: str, *, off: bool) -> tuple[Address, ...]:
    """A string, a list of strings, or (where ``off``) false for "not at all"."""
    if value is False and off:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        want = "an address, a list of them, or false" if off else "an address or a list"
        raise ConfigError(f"{where}: want {want}, got {value!r}")
    return tuple(_address(item, default_port, where) for item in items)


def _strings(value: Any, where: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise ConfigError(f"{where}: want a string or a list of strings, got {value!r}")
    return tuple(items)


def _number(value: Any, where: str, low: float, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise ConfigError(f"{where}: want a number, got {value!r}")
    if value < low or (high is not None and value > high):
        bounds = f"at least {low:g}" if high is None else f"{low:g} to {high:g}"
        raise ConfigError(f"{where}: {value!r} is out of range ({bounds})")
    return float(value)


def _integer(value: Any, where: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}: want a whole number, got {value!r}")
    if not low <= value <= high:
        raise ConfigError(f"{where}: {value} is out of range ({low} to {high})")
    return value


def _boolean(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: want true or false, got {value!r}")
    return value


def _choice(value: Any, where: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"{where}: want one of {', '.join(choices)}, got {value!r}")
    return str(value)


def _zone(value: Any, where: str) -> str:
    """An IANA zone name or a firmware index, checked now (mapped by the keeper)."""
    from hs100local.timezones import index_for_zone

    if isinstance(value, int) and not isinstance(value, bool):
        _integer(value, where, 0, 109)
        return str(value)
    if not isinstance(value, str):
        raise ConfigError(f"{where}: want an IANA zone name or an index 0-109, got {value!r}")
    try:
        index_for_zone(value)
    except (ValueError, KeyError, TargetError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return value


def _check_rules(rules: tuple[str, ...], where: str) -> None:
    from hs100local.dns.rules import MODES, parse_rule

    for text in rules:
        try:
            rule = parse_rule(text)
        except TargetError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if rule.mode not in MODES:
            raise ConfigError(f"{where}: {text!r}: mode must be one of {', '.join(MODES)}")
        if rule.address is not None:
            try:
                ipaddress.IPv4Address(rule.address)
            except ValueError:
                raise ConfigError(f"{where}: {text!r}: {rule.address!r} is not an IPv4 "
                                  "address") from None


def _check_networks(nets: tuple[str, ...], where: str) -> None:
    for net in nets:
        try:
            ipaddress.IPv4Network(net, strict=False)
        except ValueError as exc:
            raise ConfigError(f"{where}: {net!r}: {exc}") from None


def _zones(value: Any, where: str) -> tuple[tuple[str, int], ...]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: want a table of plug = zone index, e.g. "
                          "[zones] \"Kitchen\" = 41")
    return tuple((str(k), _integer(v, f"{where}.{k}", 0, 109)) for k, v in value.items())


def _convert(key: str, value: Any, source: str | None) -> tuple[str, Any]:
    """(field name, checked value) for one key of the file or one flag."""
    where = _where(source, key)
    name = key.replace("-", "_")
    if name in ("dns", "ntp", "cloud"):
        port = {"dns": 53, "ntp": 123, "cloud": 443}[name]
        return name, _addresses(value, port, where, off=True)
    if name == "upstream":
        return name, _addresses(value, 53, where, off=False)
    if name in ("db", "user"):
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where}: want a non-empty string, got {value!r}")
        return name, value
    if name in ("assume_synced", "default_rules"):
        return name, _boolean(value, where)
    if name in ("allow", "sinkhole", "interfaces"):
        items = _strings(value, where)
        if name == "allow":
            _check_networks(items, where)
        elif name == "sinkhole":
            _check_rules(items, where)
        return name, items
    if name == "ttl":
        return name, _integer(value, where, 0, 86400)
    if name == "stratum":
        return name, _integer(value, where, 1, 15)
    if name in ("dns_rate_limit", "ntp_rate_limit", "cloud_rate_limit", "time_threshold",
                "time_interval", "discover_interval"):
        return name, _number(value, where, 0)
    if name == "retention_days":
        return name, _number(value, where, 0.01)
    if name == "max_db_mb":
        return name, _number(value, where, 1)
    if name == "cloud_mode":
        return name, _choice(value, where, CLOUD_MODES)
    if name == "log_level":
        return name, _choice(value, where, LOG_LEVELS)
    if name == "zone":
        return name, _zone(value, where)
    if name == "zones":
        return name, _zones(value, where)
    known = ", ".join(ServeConfig().key_names)
    raise ConfigError(f"{_where(source, key)}: unknown key (known: {known})")


def from_mapping(data: Mapping[str, Any], source: str | None = None,
                 base: ServeConfig | None = None) -> ServeConfig:
    """A config from parsed TOML (or flags), on top of ``base`` (default: the defaults)."""
    values: dict[str, Any] = {}
    start = base or ServeConfig()
    for key, value in data.items():
        if key == "web":
            values["web"] = _web(value, source, start.web)
            continue
        name, checked = _convert(str(key), value, source)
        values[name] = checked
    config = replace(start, **values)
    return replace(config, source=source or (base.source if base else None))


def load(path: str | os.PathLike[str]) -> ServeConfig:
    """Read and check a TOML file; ConfigError (naming the file and key) if it is bad."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the same parser, as a package (pyproject)
        import tomli as tomllib  # type: ignore[no-redef]

    text_path = str(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"{text_path}: cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{text_path}: not valid TOML: {exc}") from None
    return from_mapping(data, text_path)


def load_or_default(path: str | os.PathLike[str] | None) -> tuple[ServeConfig, bool]:
    """(config, whether a file was read): ``path``, else :data:`DEFAULT_PATH` when it
    exists, else the defaults. For the commands that need the companion's addresses
    (``firewall``, ``audit``) and find them where the service's file lives."""
    if path is None and DEFAULT_PATH.exists():
        path = DEFAULT_PATH
    return (load(path), True) if path is not None else (ServeConfig(), False)


def db_path(config: ServeConfig) -> Path:
    from hs100local.inventory import default_db_path

    return Path(config.db) if config.db else default_db_path()


def zone_index(config: ServeConfig) -> int | None:
    """The configured default zone as an index 0-109; None = this host's zone."""
    if config.zone is None:
        return None
    if config.zone.isdigit():
        return int(config.zone)
    from hs100local.timezones import index_for_zone

    return index_for_zone(config.zone)
