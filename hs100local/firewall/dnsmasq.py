"""dnsmasq rendering: the sinkhole names for a network that keeps its own dnsmasq.

Users whose router already runs dnsmasq (OpenWrt, Pi-hole) may leave hs100local's DNS
responder off (``dns = false``) and let dnsmasq answer the plugs' names instead. The
names are the responder's own default rules (:mod:`hs100local.dns.rules`), so both
answer alike: cloud names get the cloud listener's address, time-server names the NTP
server's. ``address=/NAME/ADDR`` alone would still forward AAAA, TXT and HTTPS queries
for the name upstream; ``local=/NAME/`` keeps every query for it on the network.
"""

from __future__ import annotations

from hs100local.dns.rules import CLOUD_SUFFIXES, NTP_SUFFIXES
from hs100local.firewall.plan import Plan


def name_targets(plan: Plan) -> list[tuple[str, str]]:
    """(DNS suffix, IPv4 answer) pairs, cloud names first."""
    # No cloud listener: the DNS address, where a plug's TLS attempt is at least refused.
    cloud = plan.cloud[0][0] if plan.cloud else plan.dns[0][0]
    ntp = plan.ntp[0][0]
    return [(name, cloud) for name in CLOUD_SUFFIXES] + [(name, ntp) for name in NTP_SUFFIXES]


def render_dnsmasq(plan: Plan) -> str:
    lines = [
        "# hs100local: answer the plugs' cloud and time-server names on this network",
        "# (dnsmasq syntax). Save as /etc/dnsmasq.d/hs100local.conf (OpenWrt: a file in",
        "# dnsmasq's confdir) and restart dnsmasq. Every client of this dnsmasq gets these",
        "# answers: the names include NTP pools, which the companion's NTP server serves.",
        "# local=/NAME/ keeps every other query type for NAME off the upstream servers.",
    ]
    for name, address in name_targets(plan):
        lines += [f"local=/{name}/", f"address=/{name}/{address}"]
    return "\n".join(lines) + "\n"
