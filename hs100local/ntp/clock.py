"""What the kernel says about the system clock: synchronised or not, how good.

An SNTP server must not claim a time it does not have: a plug accepts the first
valid reply and keeps it for hours. So the leap indicator, stratum and root
dispersion come from ``ntp_adjtime(2)`` (the state chronyd, ntpd or
systemd-timesyncd maintain): synchronised means LI 0 and our stratum, with the
kernel's maximum error as root dispersion; never synchronised means LI 3 and
stratum 16, which a well-behaved client (chrony, ntpdig, a plug) ignores. Hosts
whose clock is good without any such daemon opt in with ``assume_synced``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from hs100local.ntp import wire

# <sys/timex.h>
TIME_OK, TIME_INS, TIME_DEL, TIME_OOP, TIME_WAIT, TIME_ERROR = range(6)
STA_UNSYNC = 0x0040

#: re-read the kernel state at most this often (it changes slowly; a syscall per
#: packet would cost more than the rest of the reply)
REFRESH_SECONDS = 1.0


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _Timex(ctypes.Structure):
    """glibc's ``struct timex`` (the kernel's ``__kernel_timex`` on LP64 and ILP32)."""

    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),  # µs
        ("esterror", ctypes.c_long),  # µs
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time", _Timeval),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_padding", ctypes.c_int * 11),
    ]


@dataclass(frozen=True)
class KernelSync:
    """One reading of the kernel's clock discipline."""

    synced: bool
    leap: int  # wire.LEAP_*: a leap second announced by the kernel
    max_error: float  # seconds; the kernel's bound on the clock's error
    est_error: float  # seconds
    source: str  # "ntp_adjtime" or why it could not be read


def read_kernel_sync() -> KernelSync:
    """``ntp_adjtime`` with modes 0 (read only; needs no privilege)."""
    if not sys.platform.startswith("linux"):
        return KernelSync(False, wire.LEAP_NONE, 16.0, 16.0, f"not Linux ({sys.platform})")
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        adjtime = libc.ntp_adjtime
    except (OSError, AttributeError) as exc:
        return KernelSync(False, wire.LEAP_NONE, 16.0, 16.0, f"no ntp_adjtime: {exc}")
    timex = _Timex()
    state = adjtime(ctypes.byref(timex))
    if state < 0:
        return KernelSync(False, wire.LEAP_NONE, 16.0, 16.0,
                          f"ntp_adjtime failed: errno {ctypes.get_errno()}")
    synced = state != TIME_ERROR and not timex.status & STA_UNSYNC
    leap = {TIME_INS: wire.LEAP_INSERT, TIME_DEL: wire.LEAP_DELETE}.get(state, wire.LEAP_NONE)
    return KernelSync(synced, leap, timex.maxerror / 1e6, timex.esterror / 1e6, "ntp_adjtime")


def measure_precision(samples: int = 64) -> int:
    """log2 of the smallest step between two clock readings, as ntpd and chrony
    report it (e.g. -24 for ~60 ns): what a reader of our timestamps can resolve."""
    best = None
    for _ in range(samples):
        first = time.time_ns()
        second = time.time_ns()
        while second == first:
            second = time.time_ns()
        step = second - first
        best = step if best is None else min(best, step)
    assert best is not None
    return max(-32, min(0, math.floor(math.log2(best / 1e9))))


class ClockState:
    """The ``ServerState`` for replies, refreshed from the kernel at most once a second.

    ``assume_synced`` answers as synchronised (LI 0, ``stratum``) even when the
    kernel says otherwise, for hosts whose clock is good without an NTP daemon
    (an RTC-backed router with manual time, a test). ``read`` is injectable.
    """

    def __init__(
        self,
        *,
        stratum: int = 3,
        assume_synced: bool = False,
        ref_id: str | None = None,
        read: Callable[[], KernelSync] = read_kernel_sync,
        precision: int | None = None,
    ) -> None:
        if not 1 <= stratum <= 15:
            raise ValueError(f"stratum {stratum}: want 1-15")
        self.stratum = stratum
        self.assume_synced = assume_synced
        # 127.127.1.1: the conventional ID of a local reference clock (ntpd's LOCAL(1),
        # chrony's "local" directive). We do not know the upstream of the host's daemon.
        self.ref_id = wire.ref_id(ref_id or ("LOCL" if stratum == 1 else "127.127.1.1"))
        self.read = read
        self.precision = measure_precision() if precision is None else precision
        self._state: wire.ServerState | None = None
        self._kernel: KernelSync | None = None
        self._refreshed = -math.inf

    @property
    def kernel(self) -> KernelSync:
        self.current()
        assert self._kernel is not None
        return self._kernel

    def current(self) -> wire.ServerState:
        now = time.monotonic()
        if self._state is None or now - self._refreshed >= REFRESH_SECONDS:
            self._refreshed = now
            self._kernel = kernel = self.read()
            if kernel.synced or self.assume_synced:
                dispersion = kernel.max_error if kernel.synced else 0.0
                self._state = wire.ServerState(
                    kernel.leap if kernel.synced else wire.LEAP_NONE, self.stratum,
                    self.precision, 0.0, dispersion, self.ref_id, time.time_ns())
            else:
                self._state = wire.ServerState(
                    wire.LEAP_UNSYNCHRONIZED, wire.STRATUM_UNSYNCHRONIZED, self.precision,
                    0.0, 0.0, b"INIT", 0)
        return self._state

    @property
    def synced(self) -> bool:
        return self.current().stratum != wire.STRATUM_UNSYNCHRONIZED
