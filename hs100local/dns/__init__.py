"""The DNS responder: sinkhole the vendor's cloud names, forward everything else.

* :mod:`hs100local.dns.rules` – sinkhole rules, label-wise suffix matching (sans-I/O);
* :mod:`hs100local.dns.wire` – a small wire-format reader/writer for the hot path;
* :mod:`hs100local.dns.answers` – every reply the responder builds (dnslib);
* :mod:`hs100local.dns.forward` – upstream forwarding with ID remapping and a cache;
* :mod:`hs100local.dns.server` – the asyncio UDP/TCP server, access control, rate limit.
"""
