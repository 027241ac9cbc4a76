"""``hs100local events``, ``watch`` and ``report``: reading what ``serve`` recorded.

Registered on the root group by :mod:`hs100local.cli`. They read the database
read-only (the daemon's file may belong to its service user) and name plugs by
their inventory alias; rendering lives in :mod:`hs100local.eventview` and
:mod:`hs100local.report`.
"""

from __future__ import annotations

import time
from typing import Any

import click

from hs100local.cli import Number, cli, emit, json_db_options, one_line, settings

_KIND_CHOICE = click.Choice(["dns", "ntp", "tls", "time", "firmware", "discovery", "store"])


def _db_path(config_file: str | None) -> Any:
    """--db, else the db of a serve config given with --config, else the default."""
    if settings().db:
        return settings().db_path()
    if config_file:
        from hs100local import config as cfg

        try:
            return cfg.db_path(cfg.load(config_file))
        except cfg.ConfigError as exc:
            raise click.BadParameter(str(exc), param_hint="--config") from None
    return settings().db_path()


def _since(text: str | None, now: float, option: str = "--since") -> float | None:
    from hs100local.eventview import parse_since

    if text is None:
        return None
    try:
        return parse_since(text, now)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from None


class _Plugs:
    """The inventory, read once: its plugs (to name events), the plug ``--plug`` names,
    and, for ``report``, its firmware changes since ``changes_since``. Empty without an
    inventory file."""

    def __init__(self, path: Any, name: str | None = None,
                 changes_since: float | None = None) -> None:
        import os
        from datetime import datetime, timezone

        from hs100local.errors import TargetError
        from hs100local.inventory import Inventory

        self.records: list[Any] = []
        self.changes: list[Any] = []
        self.selected: Any = None
        if os.path.exists(path):
            with Inventory(path) as inventory:
                self.records = inventory.plugs()
                if name is not None:
                    found = inventory.lookup(name)  # alias, MAC or an outlet's alias
                    self.selected = found.record if found is not None else None
                if changes_since is not None and self.records:
                    self.changes = inventory.changes(
                        since=datetime.fromtimestamp(changes_since, timezone.utc),
                        kinds=["firmware", "protocol"])
        if name is not None and self.selected is None:
            raise TargetError(f"no plug {name!r} in the inventory (see 'hs100local plugs')")
        from hs100local.attribution import unique_hosts

        self._alias_by_mac = {r.mac: r.alias for r in self.records}
        self._mac_by_host = unique_hosts(self.records)  # shared addresses name nobody

    def selection(self) -> dict[str, Any]:
        """``EventReader.events`` arguments for the --plug plug (its unattributed
        events too, by its address), or none."""
        if self.selected is None:
            return {}
        mac = self.selected.mac
        return {"plug": mac,
                "plug_addresses": [h for h, m in self._mac_by_host.items() if m == mac]}

    def alias(self, event: Any) -> str | None:
        """The alias of the event's plug: attributed when recorded, or its client is a
        plug's address now (an event recorded by a service that had no inventory)."""
        if event.plug is not None:
            return self._alias_by_mac.get(event.plug)
        mac = self._mac_by_host.get(event.client) if event.client else None
        return self._alias_by_mac.get(mac) if mac else None


_config_option = click.option(
    "--config", "config_file", type=click.Path(dir_okay=False), default=None,
    help="Read the database path from this serve config (its 'db' key).")


def _filters(fn: Any) -> Any:
    fn = click.option("--client", metavar="ADDR", help="Only events of this client address.")(fn)
    fn = click.option("--kind", "kinds", multiple=True, type=_KIND_CHOICE,
                      help="Only these kinds (repeatable).")(fn)
    fn = click.option("--plug", "plug_name", metavar="ALIAS|MAC",
                      help="Only events of this plug (from the inventory).")(fn)
    return fn


@cli.command()
@json_db_options
@_config_option
@_filters
@click.option("--since", metavar="DURATION|TIME",
              help="Only events from then on: 1h, 30m, 2d, or an ISO time (default: all).")
@click.option("--until", metavar="DURATION|TIME", help="Only events before then.")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Only the newest N (still printed oldest first).")
def events(config_file: str | None, plug_name: str | None, kinds: tuple[str, ...],
           client: str | None, since: str | None, until: str | None,
           limit: int | None) -> None:
    """List recorded events (DNS, NTP, cloud TLS, time keeper, firmware), oldest first.

    \b
    Examples:
      hs100local events --since 1h --kind tls
      hs100local events --plug "Desk lamp" --json
    """
    from hs100local.events import EventReader
    from hs100local.eventview import event_json, line

    now = time.time()
    path = _db_path(config_file)
    plugs = _Plugs(path, plug_name)
    with EventReader(path) as reader:
        found = reader.events(since=_since(since, now), until=_since(until, now, "--until"),
                              kind=kinds or None, client=client, limit=limit,
                              **plugs.selection())
    named = [(event, plugs.alias(event)) for event in found]
    emit([event_json(e, alias) for e, alias in named],
         [line(e, alias) for e, alias in named] or ["No events."])


@cli.command()
@json_db_options
@_config_option
@_filters
@click.option("-n", "--lines", "backlog", type=click.IntRange(min=0), default=10,
              show_default=True, help="Show the last N events first.")
@click.option("--text", "force_text", is_flag=True,
              help="Text lines even when the output is not a terminal.")
@click.option("--interval", type=Number(min=0.05, max=3600), default=0.5, show_default=True,
              metavar="SECONDS", help="How often to look for new events.")
def watch(config_file: str | None, plug_name: str | None, kinds: tuple[str, ...],
          client: str | None, backlog: int, force_text: bool, interval: float) -> None:
    """Follow events as they are recorded (Ctrl-C stops).

    On a terminal each event is a coloured line; piped (or with --json) each is a
    JSON object on its own line, for jq or a log shipper. An event repeated within
    a minute is shown once (it is counted, see 'events').
    """
    import json
    import sys

    from hs100local.events import EventReader
    from hs100local.eventview import colour, event_json, line

    path = _db_path(config_file)
    as_json = settings().json or (not force_text and not sys.stdout.isatty())
    plugs = _Plugs(path, plug_name)
    selection = dict(kind=kinds or None, client=client, **plugs.selection())

    def show(batch: list[Any]) -> None:
        for event in sorted(batch, key=lambda e: e.id):
            alias = plugs.alias(event)
            if as_json:
                click.echo(json.dumps(event_json(event, alias), ensure_ascii=False))
            else:
                click.secho(line(event, alias), fg=colour(event.kind))
        sys.stdout.flush()

    try:
        with EventReader(path) as reader:
            last_id = reader.last_id()
            show(reader.events(limit=backlog, **selection) if backlog else [])
            while True:
                time.sleep(interval)  # SQLite has no change notification across processes
                top = reader.last_id()
                if top > last_id:
                    show([e for e in reader.events(after_id=last_id, **selection)
                          if e.id <= top])
                    last_id = top
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # `watch | head`: the reader is gone, not an error
        sys.stderr.close()


@cli.command()
@json_db_options
@_config_option
@click.option("--since", default="24h", show_default=True, metavar="DURATION|TIME",
              help="The window: 24h, 7d, or an ISO time.")
@click.option("--plug", "plug_name", metavar="ALIAS|MAC", help="Only this plug.")
def report(config_file: str | None, since: str, plug_name: str | None) -> None:
    """Per plug: cloud attempts, names looked up, NTP and its clock, time syncs,
    firmware changes, and a one-line verdict on its isolation."""
    from hs100local.events import EventReader
    from hs100local.report import build_report, render

    now = time.time()
    start = _since(since, now)
    assert start is not None  # --since has a default
    path = _db_path(config_file)
    plugs = _Plugs(path, plug_name, changes_since=start)
    with EventReader(path) as reader:
        found = reader.events(since=start, **plugs.selection())
    selected = plugs.records if plugs.selected is None else [plugs.selected]
    result = build_report(found, selected, plugs.changes, since=start, until=now)
    if plugs.selected is not None:
        result.others = []
    emit(result.as_dict(), [one_line(text) for text in render(result)])
