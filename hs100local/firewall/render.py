"""``render(plan)``: the plan as text in its format; pure, so it is tested without root."""

from __future__ import annotations

from collections.abc import Callable

from hs100local.firewall.dnsmasq import render_dnsmasq
from hs100local.firewall.iptables import render_ip6tables, render_iptables
from hs100local.firewall.nft import render_nft
from hs100local.firewall.plan import Plan
from hs100local.firewall.uci import render_uci

RENDERERS: dict[str, Callable[[Plan], str]] = {
    "nft": render_nft,
    "iptables": render_iptables,
    "ip6tables": render_ip6tables,
    "uci": render_uci,
    "dnsmasq": render_dnsmasq,
}


def render(plan: Plan) -> str:
    """The rules (or dnsmasq lines) for ``plan.format``; the same plan gives the same text."""
    return RENDERERS[plan.format](plan)
