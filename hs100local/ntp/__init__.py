"""SNTP server for plugs cut off from the internet (RFC 4330 / RFC 5905).

``wire`` is the sans-I/O packet codec, ``clock`` reads the kernel's sync state and
the clock's precision, ``server`` is the asyncio UDP server.
"""
