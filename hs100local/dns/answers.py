"""Replies the responder builds itself (dnslib): sinkhole answers and errors.

The sinkhole is authoritative for the names it holds (AA set, an SOA in the
authority section of negative answers, so resolvers cache the "no" for the TTL);
recursion is offered (RA) because everything else is forwarded.
"""

from __future__ import annotations

from dnslib import EDNS0, QTYPE, RCODE, RR, SOA, A, DNSRecord

from hs100local.dns.rules import Rule
from hs100local.dns.wire import EDNS_UDP_SIZE

SOA_MNAME = "sinkhole.hs100local.invalid."
SOA_RNAME = "hostmaster.hs100local.invalid."


def has_edns(request: DNSRecord) -> bool:
    return any(rr.rtype == QTYPE.OPT for rr in request.ar)


def _finish(request: DNSRecord, reply: DNSRecord) -> DNSRecord:
    if has_edns(request):
        reply.add_ar(EDNS0(udp_len=EDNS_UDP_SIZE))
    return reply


def soa(zone: str, ttl: int) -> RR:
    return RR(zone + ".", QTYPE.SOA, ttl=ttl,
              rdata=SOA(SOA_MNAME, SOA_RNAME, (1, 3600, 600, 86400, ttl)))


_A = int(QTYPE.A)  # a plain int: QTYPE.A is a Bimap attribute lookup on every access
_ADDRESS_MODES = frozenset(("redirect", "ntp", "null"))


def answers_a(rule: Rule, qtype: int, qclass: int) -> bool:
    """Whether this rule answers this query with an address (only A, class IN)."""
    return qtype == _A and qclass == 1 and rule.mode in _ADDRESS_MODES


def rule_address(rule: Rule, local: str | None) -> str:
    if rule.mode == "null":
        return "0.0.0.0"
    return rule.address or local or "0.0.0.0"


def sinkhole_reply(request: DNSRecord, rule: Rule, local: str | None, ttl: int) -> DNSRecord:
    """The answer for a sinkholed name: an address for A, NXDOMAIN, or NODATA + SOA."""
    reply = request.reply(ra=1, aa=1)
    q = request.q
    if rule.mode == "nxdomain":
        reply.header.rcode = RCODE.NXDOMAIN
        reply.add_auth(soa(rule.suffix, ttl))
    elif answers_a(rule, q.qtype, q.qclass):
        reply.add_answer(RR(q.qname, QTYPE.A, ttl=ttl, rdata=A(rule_address(rule, local))))
    else:
        reply.add_auth(soa(rule.suffix, ttl))
    return _finish(request, reply)


def error_reply(request: DNSRecord, rcode: int) -> DNSRecord:
    """REFUSED, SERVFAIL, NOTIMP or FORMERR echoing the question."""
    reply = request.reply(ra=1, aa=0)
    reply.header.rcode = rcode
    return _finish(request, reply)
