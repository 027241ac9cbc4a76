"""``hs100local firewall``: packet-filter rules that keep the plugs off the internet.

The plan (:mod:`.plan`) says which plugs, where the companion is and what the policy
allows; renderers turn it into nft, iptables, OpenWrt uci or dnsmasq text without any
I/O (:mod:`.render`); :mod:`.apply` checks, applies and removes them with the real tools
and reads back what is installed (``installed()``, for the audit).
"""

from __future__ import annotations

from hs100local.firewall.apply import FirewallState, Installed, apply_for, installed
from hs100local.firewall.plan import Plan, PlanError, PlugSpec, build_plan, plan_for
from hs100local.firewall.render import render

__all__ = ["FirewallState", "Installed", "Plan", "PlanError", "PlugSpec", "apply_for",
           "build_plan", "installed", "plan_for", "render"]
