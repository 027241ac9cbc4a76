"""nftables rendering: one table ``inet hs100local`` that is the whole of our ruleset.

Why a table of our own: the table is the unit nft creates and deletes atomically, so
applying is "declare, delete, define" in one ``nft -f`` transaction and removing is
``delete table`` - nothing in anyone else's tables is ever touched. Our base chains
only ever *reject*; an ``accept`` in them ends only our table's verdict, so whatever
the user's own tables decide about allowed traffic still holds.

Plugs are named sets (``plug_macs``, ``plug_ipv4``, ``lan_ipv4``) so the rules are
the same for one plug or fifty, and ``installed()`` reads the coverage back from them.
"""

from __future__ import annotations

from hs100local.firewall.plan import PLUG_PORT, Allow, Plan, Redirect

TABLE = "hs100local"
FAMILY = "inet"
#: just before the usual filter/NAT priority: a plug gets our reset before another
#: table's silent drop, and our DNAT is the one that counts (the first NAT wins)
FILTER_PRIORITY = "filter - 5"
NAT_PRIORITY = "dstnat - 5"


def _set(items: tuple[str, ...]) -> str:
    return items[0] if len(items) == 1 else "{ " + ", ".join(items) + " }"


def _ports(ports: tuple[int, ...]) -> str:
    return _set(tuple(str(p) for p in ports))


def _comment(text: str) -> str:
    # our own fixed labels only: user input never reaches a comment
    return f'comment "hs100local: {text}"'


def _allow(rule: Allow) -> str:
    match = [f"ip daddr {rule.address}" if rule.address else "meta nfproto ipv4"]
    if rule.dports:
        match.append(f"{rule.proto} dport {_ports(rule.dports)}")
    if rule.sports:
        match.append(f"{rule.proto} sport {_ports(rule.sports)}")
    return " ".join([*match, "accept", _comment(f"plug {rule.label}")])


def _redirect(rule: Redirect) -> str:
    where = (f"ip daddr != {rule.to_address}" if rule.skip_target else "meta nfproto ipv4")
    return (f"{where} {rule.proto} dport {rule.port} dnat ip to "
            f"{rule.to_address}:{rule.to_port} {_comment(f'plug {rule.label} to ours')}")


def _elements(items: tuple[str, ...]) -> list[str]:
    return [f"\t\telements = {{ {', '.join(items)} }}"] if items else []


def _plug_jumps(chain: str) -> list[str]:
    return [f"ether saddr @plug_macs jump {chain} {_comment('plug by MAC')}",
            f"ip saddr @plug_ipv4 jump {chain} {_comment('plug by address')}"]


def _chain(name: str, rules: list[str], hook: str | None = None) -> list[str]:
    lines = [f"\tchain {name} {{"]
    if hook:
        lines.append(f"\t\t{hook}")
    lines += [f"\t\t{rule}" for rule in rules]
    return [*lines, "\t}", ""]


def table_body(plan: Plan) -> list[str]:
    """The ``table inet hs100local { ... }`` definition, line by line."""
    # Replies pass; a plug's own packets of an established connection meet the policy
    # again, so a cloud connection opened before the rules dies at its next packet.
    established = [f"ct state related accept {_comment('related')}",
                   f"ct state established ct direction reply accept {_comment('replies')}"]
    refuse = f"jump refuse {_comment('everything else')}"
    allows = plan.allows()
    lines = [f"table {FAMILY} {TABLE} {{", '\tcomment "hs100local: cloud isolation for smart'
             ' plugs (hs100local firewall)"', ""]
    lines += ["\tset plug_macs {", "\t\ttype ether_addr", '\t\tcomment "hs100local plugs"',
              *_elements(tuple(m.lower() for m in plan.macs)), "\t}", ""]
    lines += ["\tset plug_ipv4 {", "\t\ttype ipv4_addr", '\t\tcomment "hs100local plugs"',
              *_elements(plan.ips), "\t}", ""]
    lines += ["\tset lan_ipv4 {", "\t\ttype ipv4_addr", "\t\tflags interval",
              '\t\tcomment "hs100local: may reach the plugs on 9999"',
              *_elements(plan.lan), "\t}", ""]
    lines += _chain("input", [*established, *_plug_jumps("plug_in")],
                    f"type filter hook input priority {FILTER_PRIORITY}; policy accept;")
    lines += _chain("forward", [*established, *_plug_jumps("plug_fwd"),
                                f"ip daddr @plug_ipv4 jump to_plug {_comment('to a plug')}"],
                    f"type filter hook forward priority {FILTER_PRIORITY}; policy accept;")
    lines += _chain("plug_in", [_allow(a) for a in allows] + [refuse])
    lines += _chain("plug_fwd", [_allow(a) for a in allows if not a.input_only] + [refuse])
    lines += _chain("to_plug", [
        f"ip saddr @lan_ipv4 meta l4proto {{ tcp, udp }} th dport {PLUG_PORT} accept "
        + _comment("LAN controls the plugs"), refuse])
    lines += _chain("refuse", [
        f"meta l4proto tcp reject with tcp reset {_comment('fail fast')}",
        f"reject with icmpx type admin-prohibited {_comment('fail fast')}"])
    lines += _chain("prerouting", _plug_jumps("plug_redirect"),
                    f"type nat hook prerouting priority {NAT_PRIORITY}; policy accept;")
    lines += _chain("plug_redirect", [_redirect(r) for r in plan.redirects()])
    lines[-1:] = ["}"]
    return lines


def render_nft(plan: Plan) -> str:
    """An ``nft -f`` script that atomically replaces table inet hs100local (and only it).

    The empty declaration makes the delete succeed when the table does not exist yet;
    all three statements are one transaction, so there is never a moment without rules.
    """
    header = [
        f"# hs100local firewall: cloud isolation for {plan.describe()}"
        f" (companion {', '.join(plan.companion)}).",
        "# Load with `nft -f FILE`: replaces table inet hs100local atomically, nothing else.",
        "# Remove with `hs100local firewall --remove` (= nft delete table inet hs100local).",
        f"table {FAMILY} {TABLE}",
        f"delete table {FAMILY} {TABLE}",
    ]
    return "\n".join(header + table_body(plan)) + "\n"
