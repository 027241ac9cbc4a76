"""``hs100local audit [--fix]``: is every plug cut off from the cloud, and how we know.

Registered on the root group by :mod:`hs100local.cli`. The verdicts are made by
:mod:`hs100local.audit` (pure), the facts gathered by :mod:`hs100local.audit_run`.
Exit codes: 0 every plug isolated; 1 any plug leaking or unknown (for cron and
monitoring); 2 usage; 3 nothing to audit (no plugs) or the database is unreadable.
"""

from __future__ import annotations

import time
from typing import Any

import click

from hs100local.cli import cli, emit, one_line, output_options, settings
from hs100local.cli_events import _since


def serve_config(config_file: str | None) -> Any:
    """The serve config: --config, else /etc/hs100local/hs100local.toml when it exists,
    else the defaults (a demo on loopback). A bad file is a usage error."""
    from hs100local import config as cfg

    try:
        return cfg.load_or_default(config_file)[0]
    except cfg.ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--config") from None


def _records(db: Any, plug_name: str | None) -> tuple[list[Any], list[Any]]:
    """(the plugs to audit, every plug in the inventory)."""
    import os

    from hs100local.errors import StoreError, TargetError
    from hs100local.inventory import Inventory

    if not os.path.exists(db):
        raise StoreError(f"no inventory at {db}: run 'hs100local discover' first")
    with Inventory(db) as inventory:
        everyone = inventory.plugs()
        if plug_name is None:
            return everyone, everyone
        found = inventory.lookup(plug_name)
    if found is None:
        raise TargetError(f"no plug {plug_name!r} in the inventory (see 'hs100local plugs')")
    if found.child is not None:  # --fix acts on whole plugs: never widen an outlet
        strip = found.record.alias or found.record.mac
        raise TargetError(f"{plug_name!r} is outlet {found.child.index} of {strip!r}; audit "
                          f"looks at whole plugs: --plug {strip!r}")
    return [found.record], everyone


@cli.command(scope="local")
@output_options
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="The serve config: where the companion's DNS, NTP and cloud listener "
                   "are, and the database (default /etc/hs100local/hs100local.toml when "
                   "it exists).")
@click.option("--since", default="24h", show_default=True, metavar="DURATION|TIME",
              help="Window for the recorded cloud attempts and lookups.")
@click.option("--plug", "plug_name", metavar="ALIAS|MAC", help="Only this plug.")
@click.option("--fix", is_flag=True,
              help="Unbind from the cloud, point the cloud server at the companion, set "
                   "clocks, apply the firewall (needs root), then audit again.")
def audit(config_file: str | None, since: str, plug_name: str | None, fix: bool) -> None:
    """Per plug: local control, protocol, cloud binding and server, recorded cloud
    attempts, the companion's DNS sinkhole, clock offset, firewall rules, and a
    verdict: isolated, leaking or unknown (with the reason).

    Exits 1 when any plug is not isolated, so it can run from cron or a monitor.

    \b
    Examples:
      hs100local audit --config /etc/hs100local/hs100local.toml
      sudo hs100local audit --fix
    """
    import asyncio

    from hs100local import audit_run
    from hs100local.audit import render
    from hs100local.config import db_path

    config = serve_config(config_file)
    db = settings().db_path() if settings().db else db_path(config)
    start = _since(since, time.time())
    assert start is not None  # --since has a default
    records, everyone = _records(db, plug_name)
    if not records:
        from hs100local.errors import StoreError

        raise StoreError("no plugs in the inventory: run 'hs100local discover' first")
    timeout = settings().timeout or 3.0

    async def run() -> Any:
        result = await audit_run.run_audit(config, records, db=db, since=start,
                                           timeout=timeout)
        if not fix:
            return result
        from hs100local.events import EventStore

        with EventStore(db) as events:  # the clock fixes are time events of each plug
            fixes = await audit_run.fix(
                config, result, records, everyone, timeout=timeout, events=events,
                apply_firewall=lambda plugs: _apply_firewall(config, plugs))
        again = await audit_run.run_audit(config, records, db=db, since=start, timeout=timeout)
        again.fixes = fixes
        return again

    result = asyncio.run(run())
    emit(result.as_dict(), [one_line(text) for text in render(result)])
    if not result.isolated:
        from hs100local.cli import Failure

        bad = [p for p in result.plugs if p.verdict != "isolated"]
        raise Failure(f"{len(bad)} of {len(result.plugs)} plug(s) not isolated", 1,
                      reported=True)


def _apply_firewall(config: Any, plugs: list[Any]) -> str:
    from hs100local.firewall import apply_for

    return apply_for(config, plugs)
