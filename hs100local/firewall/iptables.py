"""iptables rendering: chains named ``HS100LOCAL-*``, one jump from each built-in chain.

Why own chains: they can be flushed and replaced without reading the user's rules, and
found again by name to be removed (``installed()`` and ``--remove`` are stateless). The
jumps carry ``-m comment --comment hs100local`` so a human reading ``iptables -S`` sees
whose they are. Allowed traffic ``RETURN``s to the built-in chain instead of being
ACCEPTed: in iptables an ACCEPT in our chain would skip every user rule after our jump,
so, as with nft, the policy only ever adds rejects and redirects.

IPv4 goes to iptables (filter and nat); IPv6 from a plug's MAC is refused by a small
ip6tables filter table (the plug has no IPv6 business with anyone).
"""

from __future__ import annotations

from dataclasses import dataclass

from hs100local.firewall.plan import PLUG_PORT, Allow, Plan, Redirect

PREFIX = "HS100LOCAL-"
JUMP_COMMENT = "hs100local"


@dataclass(frozen=True)
class TableRules:
    """Our part of one iptables table: chains, their rules, and the built-in jumps."""

    table: str  # "filter" or "nat"
    chains: tuple[str, ...]
    rules: tuple[str, ...]  # "-A CHAIN ..." lines
    jumps: tuple[tuple[str, str], ...]  # (built-in chain, our chain), inserted first


def jump_spec(chain: str) -> str:
    """The match and target of a built-in chain's jump to ``chain`` (as iptables-save
    prints it)."""
    return f"-m comment --comment {JUMP_COMMENT} -j {chain}"


def _comment(text: str) -> str:
    return f'-m comment --comment "hs100local: {text}"'


def _ports(proto: str, flag: str, ports: tuple[int, ...]) -> str:
    if len(ports) == 1:
        return f"-p {proto} -m {proto} --{flag} {ports[0]}"
    return f"-p {proto} -m multiport --{flag}s {','.join(str(p) for p in ports)}"


def _allow(chain: str, rule: Allow) -> str:
    parts = [f"-A {chain}"]
    if rule.address:
        parts.append(f"-d {rule.address}/32")
    if rule.dports:
        parts.append(_ports(rule.proto, "dport", rule.dports))
    if rule.sports:
        parts.append(_ports(rule.proto, "sport", rule.sports))
    parts += [_comment(f"plug {rule.label}"), "-j RETURN"]
    return " ".join(parts)


def _redirect(chain: str, rule: Redirect) -> str:
    skip = f"! -d {rule.to_address}/32 " if rule.skip_target else ""
    return (f"-A {chain} {skip}-p {rule.proto} -m {rule.proto} --dport {rule.port} "
            f"{_comment(f'plug {rule.label} to ours')} -j DNAT --to-destination "
            f"{rule.to_address}:{rule.to_port}")


def _plug_jumps(chain: str, target: str, plan: Plan, ipv6: bool = False) -> list[str]:
    lines = [f"-A {chain} -m mac --mac-source {mac} {_comment('plug by MAC')} -j {target}"
             for mac in plan.macs]
    if not ipv6:
        lines += [f"-A {chain} -s {ip}/32 {_comment('plug by address')} -j {target}"
                  for ip in plan.ips]
    return lines


def _established(chain: str) -> list[str]:
    """Replies pass; a plug's own packets of an established connection do not: they meet
    the policy again, so a cloud connection open before the rules were applied dies at
    its next packet instead of living on (a plug keeps one open for days)."""
    return [f"-A {chain} -m conntrack --ctstate RELATED {_comment('related')} -j RETURN",
            f"-A {chain} -m conntrack --ctstate ESTABLISHED --ctdir REPLY "
            f"{_comment('replies')} -j RETURN"]


def _refuse(chain: str, icmp: str) -> list[str]:
    return [f"-A {chain} -p tcp {_comment('fail fast')} -j REJECT --reject-with tcp-reset",
            f"-A {chain} {_comment('fail fast')} -j REJECT --reject-with {icmp}"]


def ipv4_tables(plan: Plan) -> list[TableRules]:
    """The filter and nat parts for iptables."""
    c = {name: PREFIX + name for name in
         ("INPUT", "FORWARD", "PLUG-IN", "PLUG-FWD", "TO-PLUG", "REFUSE", "PREROUTING",
          "REDIRECT")}
    refuse = f"{_comment('everything else')} -j {c['REFUSE']}"
    allows = plan.allows()
    rules = [*_established(c["INPUT"]), *_plug_jumps(c["INPUT"], c["PLUG-IN"], plan),
             *_established(c["FORWARD"]), *_plug_jumps(c["FORWARD"], c["PLUG-FWD"], plan)]
    rules += [f"-A {c['FORWARD']} -d {ip}/32 {_comment('to a plug')} -j {c['TO-PLUG']}"
              for ip in plan.ips]
    rules += [_allow(c["PLUG-IN"], a) for a in allows] + [f"-A {c['PLUG-IN']} {refuse}"]
    rules += [_allow(c["PLUG-FWD"], a) for a in allows if not a.input_only]
    rules.append(f"-A {c['PLUG-FWD']} {refuse}")
    for network in plan.lan:
        for proto in ("tcp", "udp"):
            rules.append(f"-A {c['TO-PLUG']} -s {network} -p {proto} -m {proto} --dport "
                         f"{PLUG_PORT} {_comment('LAN controls the plugs')} -j RETURN")
    rules.append(f"-A {c['TO-PLUG']} {refuse}")
    rules += _refuse(c["REFUSE"], "icmp-admin-prohibited")
    filter_table = TableRules(
        "filter", tuple(c[n] for n in ("INPUT", "FORWARD", "PLUG-IN", "PLUG-FWD", "TO-PLUG",
                                       "REFUSE")),
        tuple(rules), (("INPUT", c["INPUT"]), ("FORWARD", c["FORWARD"])))
    nat_rules = [*_plug_jumps(c["PREROUTING"], c["REDIRECT"], plan),
                 *(_redirect(c["REDIRECT"], r) for r in plan.redirects())]
    nat_table = TableRules("nat", (c["PREROUTING"], c["REDIRECT"]), tuple(nat_rules),
                           (("PREROUTING", c["PREROUTING"]),))
    return [filter_table, nat_table]


def ipv6_tables(plan: Plan) -> list[TableRules]:
    """ip6tables: refuse every IPv6 packet from a plug MAC (none when no MACs are given)."""
    if not plan.macs:
        return []
    c = {name: PREFIX + name for name in ("INPUT", "FORWARD", "REFUSE")}
    rules = [*_established(c["INPUT"]), *_plug_jumps(c["INPUT"], c["REFUSE"], plan, True),
             *_established(c["FORWARD"]), *_plug_jumps(c["FORWARD"], c["REFUSE"], plan, True),
             *_refuse(c["REFUSE"], "icmp6-adm-prohibited")]
    return [TableRules("filter", tuple(c.values()), tuple(rules),
                       (("INPUT", c["INPUT"]), ("FORWARD", c["FORWARD"])))]


def restore_text(tables: list[TableRules], header: list[str]) -> str:
    """An ``iptables-restore --noflush`` file that adds our chains and jumps."""
    lines = list(header)
    for part in tables:
        lines.append(f"*{part.table}")
        lines += [f":{chain} - [0:0]" for chain in part.chains]
        lines += part.rules
        lines += [f"-I {builtin} 1 {jump_spec(chain)}" for builtin, chain in part.jumps]
        lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def _header(plan: Plan, tool: str) -> list[str]:
    return [
        f"# hs100local firewall: cloud isolation for {plan.describe()}"
        f" (companion {', '.join(plan.companion)}), {tool}-restore format.",
        "# Load with `hs100local firewall --format iptables --apply` (replaces our chains and"
        " jumps, IPv4 and IPv6);",
        f"# `{tool}-restore --noflush FILE` works once, but repeated it adds a second set of"
        " jumps.",
    ]


def render_iptables(plan: Plan) -> str:
    return restore_text(ipv4_tables(plan), _header(plan, "iptables"))


def render_ip6tables(plan: Plan) -> str:
    tables = ipv6_tables(plan)
    header = _header(plan, "ip6tables")
    if not tables:
        header.append("# No plug MACs were given: nothing to refuse over IPv6.")
    return restore_text(tables, header)
