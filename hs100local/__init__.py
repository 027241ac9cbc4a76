"""hs100local: run TP-Link HS100-family plugs without the cloud.

The package is layered so each part can be used and tested alone:

* :mod:`hs100local.protocol` – sans-I/O core (cipher, framing, messages);
* :mod:`hs100local.transport` – asyncio TCP/UDP transport;
* :mod:`hs100local.blocking` – a blocking transport for one-shot CLI calls;
* :mod:`hs100local.ops` – device operations as pure request/parse steps;
* :mod:`hs100local.device` – the async :class:`~hs100local.device.Plug` model;
* :mod:`hs100local.emulator` – a plug emulator speaking the real protocol;
* :mod:`hs100local.cli` – the thin command-line front end.

Nothing is imported here on purpose: ``hs100local --help`` must start fast.
"""

__version__ = "0.1.0"
