"""Shared fixtures: emulated plugs on loopback, each in its own event-loop thread."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from hs100local.emulator import MODELS, EmulatedPlug
from hs100local.emulator.server import EmulatorThread


@pytest.fixture(autouse=True)
def _contained(tmp_path, monkeypatch) -> None:
    """No test writes the user's real inventory or broadcasts beyond loopback.

    Discovery (and the re-discovery behind ``-H ALIAS``) only probes the interfaces
    in HS100LOCAL_INTERFACES; multi-host tests run in network namespaces and set
    their own environment.
    """
    monkeypatch.setenv("HS100LOCAL_DB", str(tmp_path / "inventory.db"))
    monkeypatch.setenv("HS100LOCAL_INTERFACES", "lo")


@pytest.fixture
def start_emulator() -> Iterator[Callable[..., EmulatorThread]]:
    """Factory: ``start_emulator("hs300", alias=...)`` -> a running EmulatorThread."""
    running: list[EmulatorThread] = []

    def start(model: str = "hs110", **plug_kw) -> EmulatorThread:
        emu = EmulatorThread(EmulatedPlug(MODELS[model], **plug_kw))
        emu.__enter__()
        running.append(emu)
        return emu

    yield start
    for emu in running:
        emu.__exit__(None, None, None)


@pytest.fixture
def emulator(start_emulator) -> EmulatorThread:
    return start_emulator("hs110")


@pytest.fixture
def strip(start_emulator) -> EmulatorThread:
    return start_emulator("hs300")


@pytest.fixture
def dnsmasq_upstream(tmp_path):
    """A real resolver (Debian dnsmasq) answering *.fwd.test itself, on a free port."""
    from servicekit import start_dnsmasq, stop_process

    proc, port = start_dnsmasq(["--address=/fwd.test/198.18.7.7"], workdir=tmp_path)
    try:
        yield port
    finally:
        stop_process(proc)


@pytest.fixture
def npm_plug() -> Iterator[Callable[..., Any]]:
    """Factory: ``npm_plug("hs300", alias="Strip")`` -> a running NpmPlug (tests/npmpeers.py).

    The simulated plug is tplink-smarthome-simulator from npm, on 127.0.0.1. Skips when
    node or tests/npm/node_modules is missing, fails instead with HS100LOCAL_REQUIRE_NPM=1.
    Every plug started is ended at teardown, also when the test failed.
    """
    from npmpeers import REQUIRE_ENV, NpmPlug, npm_unavailable_reason

    reason = npm_unavailable_reason()
    if reason is not None:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{reason} (and {REQUIRE_ENV}=1)", pytrace=False)
        pytest.skip(reason)
    started: list[NpmPlug] = []

    def start(model: str = "hs100", **kw: Any) -> NpmPlug:
        plug = NpmPlug(model, **kw)
        started.append(plug)
        return plug

    try:
        yield start
    finally:
        for plug in started:
            plug.close()
