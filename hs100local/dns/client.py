"""A stub resolver for one A lookup: what a plug (or the audit) asks a DNS server.

Why not the system resolver: the audit must ask *the companion's* DNS server,
whatever ``/etc/resolv.conf`` says, and an emulated plug asks the server its
DHCP handed out, from its own address. One UDP query with a random ID and source
port; a reply counts only if it comes from that server with that ID and the same
question (anything else is ignored, so a stray datagram cannot answer it). CNAME
chains inside the answer are followed. Reads are bounded by the datagram size
and the whole lookup by ``timeout``.
"""

from __future__ import annotations

import asyncio
import random
import socket
from dataclasses import dataclass

#: a UDP DNS reply larger than this is not something a stub asked for
MAX_REPLY = 4096


class LookupTimeout(TimeoutError):
    """The server did not answer within the timeout."""


@dataclass(frozen=True)
class Resolution:
    """The outcome of one A lookup: ``rcode`` as a name (``NOERROR``, ``NXDOMAIN``…),
    the IPv4 addresses reached through the CNAME chain, and the chain itself."""

    name: str
    rcode: str
    addresses: tuple[str, ...]
    cnames: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "rcode": self.rcode, "addresses": list(self.addresses),
                "cnames": list(self.cnames)}


def build_query(name: str, qid: int) -> bytes:
    """An A query for ``name`` with recursion desired."""
    from dnslib import DNSRecord

    query = DNSRecord.question(name, "A")
    query.header.id = qid
    return query.pack()


def parse_reply(data: bytes, name: str, qid: int) -> Resolution | None:
    """The resolution in ``data``, or None when it is not the reply to our query."""
    from dnslib import QTYPE, RCODE, DNSError, DNSRecord

    try:
        reply = DNSRecord.parse(data)
    except (DNSError, ValueError, IndexError, UnicodeError, KeyError):
        return None
    if not reply.header.qr or reply.header.id != qid or len(reply.questions) != 1:
        return None
    question = reply.questions[0]
    wanted = name.rstrip(".").lower()
    if str(question.qname).rstrip(".").lower() != wanted or question.qtype != QTYPE.A:
        return None
    owner, cnames, addresses = wanted, [], []
    records = [(str(rr.rname).rstrip(".").lower(), rr.rtype, rr.rdata) for rr in reply.rr]
    for _hop in range(16):  # a CNAME loop in a hostile answer ends here
        step = next((str(rdata).rstrip(".").lower() for rname, rtype, rdata in records
                     if rname == owner and rtype == QTYPE.CNAME), None)
        if step is None or step in cnames:
            break
        cnames.append(step)
        owner = step
    addresses = [str(rdata) for rname, rtype, rdata in records
                 if rname == owner and rtype == QTYPE.A]
    return Resolution(wanted, RCODE.get(reply.header.rcode, str(reply.header.rcode)),
                      tuple(addresses), tuple(cnames))


class _Waiter(asyncio.DatagramProtocol):
    def __init__(self, server: tuple[str, int], name: str, qid: int) -> None:
        self.server, self.name, self.qid = server, name, qid
        self.done: asyncio.Future[Resolution] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.done.done() or (addr[0], addr[1]) != self.server or len(data) > MAX_REPLY:
            return
        found = parse_reply(data, self.name, self.qid)
        if found is not None:
            self.done.set_result(found)

    def error_received(self, exc: Exception) -> None:
        if not self.done.done():
            self.done.set_exception(exc)


async def lookup_a(server: tuple[str, int], name: str, *, timeout: float = 2.0,
                   source: str | None = None) -> Resolution:
    """Ask ``server`` (IPv4 address, port) for the A records of ``name``.

    ``source`` binds the query to that local address. Raises :class:`LookupTimeout`
    when no valid reply came in time and :class:`OSError` when the server's port is
    closed (ICMP port unreachable) or the network is unreachable.
    """
    loop = asyncio.get_running_loop()
    qid = random.randrange(65536)
    # A connected socket: the kernel drops datagrams from anyone else and reports a
    # closed port (ICMP) as an error instead of leaving us to time out.
    transport, waiter = await loop.create_datagram_endpoint(
        lambda: _Waiter(server, name, qid), remote_addr=server,
        local_addr=(source, 0) if source else None, family=socket.AF_INET)
    try:
        transport.sendto(build_query(name, qid))
        # asyncio.wait, not wait_for: before Python 3.12 wait_for can return an answer
        # that came in the same loop iteration as a cancellation and lose the cancel
        done, _ = await asyncio.wait({waiter.done}, timeout=timeout)
        if not done:
            raise LookupTimeout(f"no answer from {server[0]}:{server[1]} within {timeout:g} s")
        return waiter.done.result()
    finally:
        waiter.done.cancel()
        transport.close()
