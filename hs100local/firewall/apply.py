"""The live firewall: check rules with the real tools, apply, remove, and read back.

Everything here runs nft / iptables-restore / iptables-save / dnsmasq as subprocesses
(their own parsers are the only authority on what they accept) and touches nothing but
our own table (nft) or our own chains and jumps (iptables). The scripts fed to
``iptables-restore`` are built by pure functions (:func:`iptables_script`) from what
``iptables-save`` printed, so the tricky part is unit-tested without root.

Errors: a missing tool or a rejected ruleset is a :class:`ToolError` (exit code 3) with
one line - the tool's first error line, or which Debian package to install.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hs100local.errors import Hs100Error, one_line
from hs100local.firewall.iptables import PREFIX, TableRules, ipv4_tables, ipv6_tables, jump_spec
from hs100local.firewall.nft import FAMILY, TABLE
from hs100local.firewall.plan import Plan, PlanError
from hs100local.firewall.render import render
from hs100local.results import normalize_mac

#: where each tool comes from on Debian, for the "install it" message
PACKAGES = {
    "nft": "nftables",
    "iptables-save": "iptables", "iptables-restore": "iptables",
    "ip6tables-save": "iptables", "ip6tables-restore": "iptables",
    "dnsmasq": "dnsmasq-base",
}
BACKENDS = ("nft", "iptables")
#: searched after PATH: the tools live in sbin, which a user's PATH often lacks
SBIN_DIRS = ("/usr/sbin", "/sbin")
_NFT_TABLE = f"{FAMILY} {TABLE}"
#: how nft and iptables say that they lack the privilege (not that the rules are wrong)
_PRIVILEGE = re.compile(r"Operation not permitted|Permission denied|must be root")


class ToolError(Hs100Error):
    """A firewall tool is missing, failed or rejected the rules (exit code 3)."""


class MissingTool(ToolError):
    """The tool is not installed (``installed()`` reports this instead of raising)."""


def _executable(name: str) -> str:
    """The tool's path; /usr/sbin and /sbin are tried too (not on a user's PATH)."""
    found = shutil.which(name) or next(
        (path for folder in SBIN_DIRS if os.access(path := os.path.join(folder, name), os.X_OK)),
        None)
    if found is None:
        raise MissingTool(f"{name} not found: install the Debian package "
                          f"{PACKAGES.get(name, name)}")
    return found


def _run(argv: Sequence[str], stdin: str | None = None,
         timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run([_executable(argv[0]), *argv[1:]], input=stdin, text=True,
                              capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise ToolError(f"{argv[0]} did not finish within {timeout:g} s") from None
    except OSError as exc:
        raise ToolError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None


def _first_error(result: subprocess.CompletedProcess[str]) -> str:
    for text in (result.stderr, result.stdout):
        for line in text.splitlines():
            if line.strip():
                return one_line(line.strip())
    return f"exit code {result.returncode}"


def _must(argv: Sequence[str], stdin: str | None = None, what: str = "rejected the rules") -> str:
    """Run; a non-zero exit is a ToolError naming the tool and its first error line."""
    result = _run(argv, stdin)
    if result.returncode != 0:
        line = _first_error(result)
        if _PRIVILEGE.search(line):
            raise ToolError(f"{argv[0]} needs root (CAP_NET_ADMIN): {line}")
        raise ToolError(f"{argv[0]} {what}: {line}")
    return result.stdout


# ------------------------------------------------------------------ iptables scripts


def _tokens(line: str) -> list[str]:
    try:
        return shlex.split(line)
    except ValueError:  # an unbalanced quote in someone's comment: good enough
        return line.split()


def _target(tokens: list[str]) -> str | None:
    for flag, value in itertools.pairwise(tokens):
        if flag in ("-j", "--jump", "-g", "--goto"):
            return value
    return None


def parse_save(text: str) -> tuple[list[str], list[str]]:
    """Our chains, and the rules of other chains that jump to them (``CHAIN <spec>``,
    exactly as ``iptables-save`` printed them, so ``-D`` finds them)."""
    chains: list[str] = []
    jumps: list[str] = []
    for line in text.splitlines():
        if line.startswith(":" + PREFIX):
            chains.append(line[1:].split()[0])
        elif line.startswith("-A "):
            tokens = _tokens(line)
            target = _target(tokens)
            if (len(tokens) > 1 and not tokens[1].startswith(PREFIX) and target
                    and target.startswith(PREFIX)):
                jumps.append(line[3:])
    return chains, jumps


def iptables_script(table: str, desired: TableRules | None, saved: str) -> str | None:
    """One ``iptables-restore --noflush`` transaction for ``table``: (re)declare our
    chains (which flushes them), delete our old jumps and stale chains, add the rules,
    insert the jumps first. ``desired`` None removes ours. None when there is nothing
    to do (no rules wanted, none there)."""
    chains, jumps = parse_save(saved)
    if desired is None and not chains and not jumps:
        return None
    wanted = desired.chains if desired is not None else ()
    stale = [c for c in chains if c not in wanted]
    lines = [f"*{table}", *(f":{c} - [0:0]" for c in (*wanted, *stale))]
    lines += [f"-D {rule}" for rule in jumps]
    lines += [f"-X {c}" for c in stale]
    if desired is not None:
        lines += desired.rules
        lines += [f"-I {builtin} 1 {jump_spec(chain)}" for builtin, chain in desired.jumps]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def _iptables_parts(plan: Plan | None) -> list[tuple[str, str, TableRules | None, bool]]:
    """(tool, table, our rules or None, required) for every table we may touch."""
    v4 = {t.table: t for t in ipv4_tables(plan)} if plan else {}
    v6 = {t.table: t for t in ipv6_tables(plan)} if plan else {}
    return [("iptables", "filter", v4.get("filter"), True),
            ("iptables", "nat", v4.get("nat"), True),
            ("ip6tables", "filter", v6.get("filter"), bool(v6))]


def _iptables_sync(plan: Plan | None, *, strict: bool) -> int:
    """Make our iptables/ip6tables part match ``plan`` (None: remove it); how many
    tables were changed. A missing iptables is an error when ``strict``; a missing
    ip6tables only when a MAC needs it."""
    changed = 0
    for tool, table, desired, required in _iptables_parts(plan):
        try:
            saved = _must([f"{tool}-save", "-t", table], what="failed")
        except MissingTool:
            if required and strict:
                raise
            continue
        script = iptables_script(table, desired, saved)
        if script is not None:
            _must([f"{tool}-restore", "--noflush"], script)
            changed += 1
    return changed


# ------------------------------------------------------------------ operations


def check(plan: Plan) -> str:
    """Have the real tool validate the rendered rules without changing anything."""
    fmt = plan.format
    if fmt == "uci":
        raise PlanError("uci output cannot be checked here: on the router, 'uci batch' it and"
                        " look at 'fw4 print' (fw3: 'fw3 print') before reloading")
    if fmt == "nft":
        _must(["nft", "-c", "-f", "-"], render(plan))
    elif fmt in ("iptables", "ip6tables"):
        if fmt == "iptables":
            _must(["iptables-restore", "--test", "--noflush"], render(plan))
        if plan.macs:
            _must(["ip6tables-restore", "--test", "--noflush"],
                  render(_with_format(plan, "ip6tables")))
    elif fmt == "dnsmasq":
        with tempfile.TemporaryDirectory(prefix="hs100local-") as folder:
            path = os.path.join(folder, "hs100local.conf")
            with open(path, "w", encoding="utf-8") as f:
                f.write(render(plan))
            _must(["dnsmasq", "--test", f"--conf-file={path}"])
    return f"{fmt}: the rules are valid (nothing was changed)"


def _with_format(plan: Plan, fmt: str) -> Plan:
    from dataclasses import replace

    return replace(plan, format=fmt)


def apply(plan: Plan) -> str:
    """Replace our rules with ``plan``'s, atomically per table; nothing else changes."""
    if plan.format == "nft":
        _must(["nft", "-f", "-"], render(plan))
        return f"applied table {_NFT_TABLE} ({plan.describe()})"
    if plan.format == "iptables":
        _iptables_sync(plan, strict=True)
        v6 = " and ip6tables" if plan.macs else ""
        return f"applied the HS100LOCAL chains to iptables{v6} ({plan.describe()})"
    raise PlanError(f"--apply works with --format nft or iptables, not {plan.format}"
                    " (print it and load it yourself)")


def _nft_table_exists() -> bool:
    result = _run(["nft", "list", "table", *_NFT_TABLE.split()])
    if result.returncode == 0:
        return True
    if "No such file or directory" in result.stderr:
        return False
    raise ToolError(f"nft cannot list the ruleset: {_first_error(result)}")


def remove(backends: Sequence[str] = BACKENDS, *, required: bool = True) -> list[str]:
    """Delete our table / chains and jumps, found by name; what was removed (empty: there
    was nothing). A missing tool is an error only when ``required`` (an explicit format)."""
    done: list[str] = []
    for backend in backends:
        try:
            if backend == "nft":
                if _nft_table_exists():
                    # declaring first makes the delete safe if it vanished meanwhile
                    _must(["nft", "-f", "-"], f"table {_NFT_TABLE}\ndelete table {_NFT_TABLE}\n")
                    done.append(f"table {_NFT_TABLE}")
            elif _iptables_sync(None, strict=required):
                done.append("the HS100LOCAL chains and jumps (iptables)")
        except MissingTool:
            if required:
                raise
    return done


# ------------------------------------------------------------------ installed()


@dataclass(frozen=True)
class Installed:
    """What our live rules cover: plug MACs (``AA:BB:..``), IPv4 addresses, LAN networks."""

    backend: str  # "nft", "iptables", or "nft+iptables" when both are present
    where: str  # "table inet hs100local", "HS100LOCAL chains in iptables", or both
    macs: tuple[str, ...]
    ipv4: tuple[str, ...]
    lan: tuple[str, ...]

    def covers(self, mac: str | None = None, ip: str | None = None) -> bool:
        """True if a plug with this MAC (any spelling) or address is matched."""
        return (normalize_mac(mac) in self.macs) or (ip is not None and ip in self.ipv4)

    def as_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "where": self.where, "macs": list(self.macs),
                "ipv4": list(self.ipv4), "lan": list(self.lan)}


@dataclass(frozen=True)
class FirewallState:
    """The answer of :func:`installed`: our rules (None: none found), a one-line reason,
    and whether nothing could be read at all (tools missing or no permission), in
    which case "no rules" means "cannot tell", not "not isolated"."""

    rules: Installed | None
    reason: str
    unreadable: bool = False


@dataclass(frozen=True)
class _Coverage:
    """One backend's view: what it found (None: nothing of ours), and could it look."""

    found: tuple[list[str], list[str], list[str]] | None  # (MACs, addresses, LANs)
    reason: str
    readable: bool


def _element(value: Any) -> str | None:
    """One element of ``nft -j`` set output: a value, a prefix, a range, or wrapped."""
    if isinstance(value, dict):
        if "elem" in value:
            return _element(value["elem"].get("val"))
        if "prefix" in value:
            return f"{value['prefix']['addr']}/{value['prefix']['len']}"
        if "range" in value:
            low, high = value["range"]
            return f"{low}-{high}"
        return None
    return str(value) if value is not None else None


def parse_nft_json(text: str) -> dict[str, list[str]]:
    """Elements of our table's sets, by set name, from ``nft -j list table``."""
    sets: dict[str, list[str]] = {}
    for item in json.loads(text).get("nftables", []):
        found = item.get("set") if isinstance(item, dict) else None
        if found and found.get("table") == TABLE and found.get("family") == FAMILY:
            elements = found.get("elem", [])
            elements = elements if isinstance(elements, list) else [elements]
            sets[found["name"]] = [e for e in map(_element, elements) if e]
    return sets


def parse_iptables_coverage(text: str) -> tuple[list[str], list[str], list[str]]:
    """(MACs, addresses, LAN networks) our chains in ``iptables-save`` output match."""
    macs: list[str] = []
    ips: list[str] = []
    lan: list[str] = []
    for line in text.splitlines():
        if not line.startswith(f"-A {PREFIX}"):
            continue
        tokens = _tokens(line)
        values = dict(itertools.pairwise(tokens))
        if "--mac-source" in values:
            macs.append(values["--mac-source"])
        elif "-s" in values and tokens[1] == f"{PREFIX}TO-PLUG":
            lan.append(values["-s"])
        elif "-s" in values and (_target(tokens) or "").startswith(PREFIX):
            ips.append(values["-s"].removesuffix("/32"))
    return macs, ips, lan


def _nft_coverage() -> _Coverage:
    try:
        result = _run(["nft", "-j", "list", "table", *_NFT_TABLE.split()], timeout=10)
    except ToolError as exc:
        return _Coverage(None, str(exc), False)
    if result.returncode != 0:
        if "No such file or directory" in result.stderr:
            return _Coverage(None, f"no table {_NFT_TABLE}", True)
        return _Coverage(None, f"nft: {_first_error(result)}", False)
    try:
        sets = parse_nft_json(result.stdout)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return _Coverage(None, f"nft printed JSON we cannot read: {exc}", False)
    return _Coverage((sets.get("plug_macs", []), sets.get("plug_ipv4", []),
                      sets.get("lan_ipv4", [])), f"table {_NFT_TABLE}", True)


def _iptables_coverage() -> _Coverage:
    texts = []
    for tool in ("iptables-save", "ip6tables-save"):
        try:
            result = _run([tool, "-t", "filter"], timeout=10)
        except ToolError as exc:
            if tool == "iptables-save":
                return _Coverage(None, str(exc), False)
            continue  # IPv4 alone tells the plugs; IPv6 only adds MACs
        if result.returncode != 0:
            return _Coverage(None, f"{tool}: {_first_error(result)}", False)
        texts.append(result.stdout)
    if not any(parse_save(text)[0] for text in texts):
        return _Coverage(None, "no HS100LOCAL chains in iptables", True)
    macs: list[str] = []
    ips: list[str] = []
    lan: list[str] = []
    for text in texts:
        found = parse_iptables_coverage(text)
        macs, ips, lan = macs + found[0], ips + found[1], lan + found[2]
    return _Coverage((macs, ips, lan), "HS100LOCAL chains in iptables", True)


def _sorted_ips(items: Sequence[str]) -> tuple[str, ...]:
    good = set()
    for item in items:
        with contextlib.suppress(ValueError):
            good.add(str(ipaddress.IPv4Address(item)))
    return tuple(sorted(good, key=ipaddress.IPv4Address))


def installed() -> FirewallState:
    """Which plugs the live hs100local rules cover, for the audit.

    Reads ``nft -j list table inet hs100local``, then ``iptables-save`` and
    ``ip6tables-save`` for our chains (both are merged when both are present). Never
    raises: a missing tool or permission shows in ``reason`` (and ``unreadable`` when
    no backend could be read).
    """
    views = {"nft": _nft_coverage(), "iptables": _iptables_coverage()}
    present = {name: view for name, view in views.items() if view.found is not None}
    reason = "; ".join(view.reason for view in views.values())
    if not present:
        unreadable = not any(view.readable for view in views.values())
        return FirewallState(None, reason, unreadable)
    macs: list[str] = []
    ips: list[str] = []
    lan: list[str] = []
    for view in present.values():
        found_macs, found_ips, found_lan = view.found or ([], [], [])
        macs, ips, lan = macs + found_macs, ips + found_ips, lan + found_lan
    rules = Installed(
        backend="+".join(present),
        where=" and ".join(view.reason for view in present.values()),
        macs=tuple(sorted({m for m in map(normalize_mac, macs) if m})),
        ipv4=_sorted_ips(ips),
        lan=tuple(sorted(set(lan))),
    )
    return FirewallState(rules, reason)


def apply_for(config: Any, records: Sequence[Any], *, backend: str | None = None) -> str:
    """Apply the rules for these inventory records with a serve config's companion
    addresses, ports and LAN (``allow``); what ``audit --fix`` runs. ``backend`` None:
    the one whose rules are installed now, else nft when it is there, else iptables.
    Raises PlanError (bad or missing input) or ToolError like the CLI's --apply."""
    from hs100local.firewall.plan import plan_for, plugs_from_inventory

    if backend is None:
        rules = installed().rules
        if rules is not None and rules.backend in BACKENDS:
            backend = rules.backend
        else:
            try:
                _executable("nft")
                backend = "nft"
            except MissingTool:
                backend = "iptables"
    return apply(plan_for(config, plugs_from_inventory(records), fmt=backend))
