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

from hs100local.cli import cli, emit, one_line, output_options, settings

_KIND_CHOICE = click.Choice(["dns", "ntp", "tls", "time", "firmware", "discovery", "store"])


def _db_path(config_file: str | None) -> Any:
    """--db, else the db of a serve config given with --config, else the default."""
    from hs100local.inventory import default_db_path

    if settings().db:
        return settings().db
    if config_file:
        from hs100local import config as cfg

        try:
            return cfg.db_path(cfg.load(config_file))
        except cfg.ConfigError as exc:
            raise click.BadParameter(str(exc), param_hint="--config") from None
    return default_db_path()


def _since(text: str | None, now: float, option: str = "--since") -> float | None:
    from hs100local.eventview import parse_since

    if text is None:
        return None
    try:
        return parse_since(text, now)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from None


class _Plugs:
    """The inventory's plugs for naming events and resolving --plug (empty without one)."""

    def __init__(self, path: Any) -> None:
        import os

        from hs100local.inventory import Inventory

        self.records: list[Any] = []
        self.changes: list[Any] = []
        self._path = path
        if os.path.exists(path):
            with Inventory(path) as inventory:
                self.records = inventory.plugs()
        self.alias_of = {r.mac: r.alias for r in self.records}

    def alias(self, mac: str | None) -> str | None:
        return self.alias_of.get(mac) if mac else None

    def resolve(self, name: str) -> Any:
        from hs100local.errors import TargetError
        from hs100local.results import normalize_mac

        found = [r for r in self.records if r.alias == name or r.mac == normalize_mac(name)]
        if not found:
            found = [r for r in self.records if r.alias.lower() == name.lower()]
        if len(found) != 1:
            problem = "no plug" if not found else "several plugs are"
            raise TargetError(f"{problem} {name!r} in the inventory (see 'hs100local plugs')")
        return found[0]


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


def _plug_filter(plugs: _Plugs, name: str | None) -> dict[str, Any]:
    if name is None:
        return {}
    record = plugs.resolve(name)
    return {"plug": record.mac, "plug_addresses": [record.host]}


def _named(plugs: _Plugs, event: Any) -> str | None:
    """The alias of the event's plug: attributed when recorded, or its client is a plug's
    address now (an event recorded by a service that had no inventory)."""
    if event.plug is not None:
        return plugs.alias(event.plug)
    for record in plugs.records:
        if record.host == event.client:
            return record.alias
    return None


@cli.command()
@output_options
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
    plugs = _Plugs(path)
    with EventReader(path) as reader:
        found = reader.events(since=_since(since, now), until=_since(until, now, "--until"),
                              kind=kinds or None, client=client, limit=limit,
                              **_plug_filter(plugs, plug_name))
    named = [(event, _named(plugs, event)) for event in found]
    emit([event_json(e, alias) for e, alias in named],
         [line(e, alias) for e, alias in named] or ["No events."])


@cli.command()
@output_options
@_config_option
@_filters
@click.option("-n", "--lines", "backlog", type=click.IntRange(min=0), default=10,
              show_default=True, help="Show the last N events first.")
@click.option("--text", "force_text", is_flag=True,
              help="Text lines even when the output is not a terminal.")
@click.option("--interval", type=click.FloatRange(min=0.05), default=0.5, show_default=True,
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
    plugs = _Plugs(path)
    selection = dict(kind=kinds or None, client=client, **_plug_filter(plugs, plug_name))

    def show(batch: list[Any]) -> None:
        for event in sorted(batch, key=lambda e: e.id):
            alias = _named(plugs, event)
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
@output_options
@_config_option
@click.option("--since", default="24h", show_default=True, metavar="DURATION|TIME",
              help="The window: 24h, 7d, or an ISO time.")
@click.option("--plug", "plug_name", metavar="ALIAS|MAC", help="Only this plug.")
def report(config_file: str | None, since: str, plug_name: str | None) -> None:
    """Per plug: cloud attempts, names looked up, NTP and its clock, time syncs,
    firmware changes, and a one-line verdict on its isolation."""
    from datetime import datetime, timezone

    from hs100local.events import EventReader
    from hs100local.inventory import Inventory
    from hs100local.report import build_report, render

    now = time.time()
    start = _since(since, now)
    assert start is not None
    path = _db_path(config_file)
    plugs = _Plugs(path)
    changes: list[Any] = []
    if plugs.records:
        with Inventory(path) as inventory:
            changes = inventory.changes(since=datetime.fromtimestamp(start, timezone.utc),
                                        kinds=["firmware", "protocol"])
    selected = plugs.records
    if plug_name is not None:
        record = plugs.resolve(plug_name)
        selected = [record]
    with EventReader(path) as reader:
        found = reader.events(since=start, **_plug_filter(plugs, plug_name))
    result = build_report(found, selected, changes, since=start, until=now)
    if plug_name is not None:
        result.others = []
    emit(result.as_dict(), [one_line(text) for text in render(result)])
