"""``hs100local firewall``: print, check, apply or remove the plugs' firewall rules.

Registered on the root group by :mod:`hs100local.cli`. A thin layer: it gathers the
inputs (serve config, inventory, options), lets :mod:`hs100local.firewall.plan` check
them and build the plan, and hands the plan to the renderers or to
:mod:`hs100local.firewall.apply`. Every error is one line and exit code 2 (bad input)
or 3 (a tool is missing or refused the rules).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import click

from hs100local.cli import cli, emit, one_line, settings

FORMAT_CHOICE = click.Choice(["nft", "iptables", "ip6tables", "uci", "dnsmasq"])


class FirewallError(click.ClickException):
    """One line on stderr and the given exit code (2 bad input, 3 tool failure)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(one_line(message))
        self.exit_code = exit_code

    def show(self, file: Any = None) -> None:
        click.echo(f"hs100local: error: {self.format_message()}", err=True)


def _load_config(config_file: str | None) -> tuple[Any, bool]:
    """(ServeConfig, whether a file was read): --config, else the default file if any."""
    from hs100local import config as cfg

    try:
        return cfg.load_or_default(config_file)
    except cfg.ConfigError as exc:
        raise FirewallError(str(exc), 2) from None


def _inventory_plugs(config: Any, from_file: bool) -> list[Any]:
    """Every plug of the inventory (--db, else the config's db, else the default)."""
    from hs100local import config as cfg
    from hs100local.firewall.plan import PlanError, plugs_from_inventory
    from hs100local.inventory import Inventory, default_db_path

    path = settings().db or (cfg.db_path(config) if from_file else default_db_path())
    records: list[Any] = []
    if os.path.exists(path):
        with Inventory(path) as inventory:
            records = inventory.plugs()
    if not records:
        raise PlanError(f"no plugs: the inventory {path} has none; give --mac/--ip or run"
                        " 'hs100local discover'")
    return plugs_from_inventory(records)


def _plan(fmt: str, config_file: str | None, companion: str | None, macs: tuple[str, ...],
          ips: tuple[str, ...], lans: tuple[str, ...], zone: str) -> Any:
    from hs100local.firewall.plan import FILTER_FORMATS, plan_for, plugs_from

    config, from_file = _load_config(config_file)
    plugs = plugs_from(macs, ips)
    if not plugs and fmt in FILTER_FORMATS:
        plugs = _inventory_plugs(config, from_file)
    return plan_for(config if from_file else None, plugs, companion=companion, lan=lans,
                    fmt=fmt, zone=zone)


def _write(path: str, text: str) -> None:
    """Write atomically: a reader (or nft -f) never sees half a file."""
    folder = os.path.dirname(os.path.abspath(path))
    temporary = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(temporary, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise FirewallError(f"cannot write {path}: {exc.strerror or exc}", 3) from None


def _to_settings(name: str) -> Any:
    """Store --json/--db where the root group's copies go (they may come either side)."""

    def callback(ctx: click.Context, _param: click.Parameter, value: Any) -> None:
        if value:
            setattr(settings(), name, value)

    return callback


def _remove(fmt: str, explicit: bool) -> None:
    from hs100local.firewall import apply as live

    if explicit and fmt not in live.BACKENDS:
        raise FirewallError(f"--remove works with --format nft or iptables, not {fmt}", 2)
    removed = live.remove([fmt] if explicit else live.BACKENDS, required=explicit)
    message = ("removed " + " and ".join(removed)) if removed else \
        "nothing to remove: no hs100local rules are installed"
    emit({"action": "remove", "removed": removed, "message": message}, message)


@cli.command()
@click.option("--json", "json_", is_flag=True, expose_value=False, callback=_to_settings("json"),
              help="Print the plan (or the result of --check/--apply/--remove) as JSON.")
@click.option("--db", metavar="PATH", expose_value=False, callback=_to_settings("db"),
              help="Plug inventory database (default: the config's 'db', else"
                   " $HS100LOCAL_DB, else the user data dir).")
@click.option("--format", "fmt", type=FORMAT_CHOICE, default="nft", show_default=True,
              help="nft: table inet hs100local; iptables (ip6tables: its IPv6 part):"
                   " iptables-restore input, chains HS100LOCAL-*; uci: an OpenWrt"
                   " 'uci batch' script; dnsmasq: the cloud and NTP names for your own"
                   " dnsmasq.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              metavar="FILE",
              help="serve config to take the companion's addresses and ports, the LAN"
                   " ('allow') and the database from (default"
                   " /etc/hs100local/hs100local.toml when it exists).")
@click.option("--companion", metavar="ADDR",
              help="The companion's LAN IPv4 address (overrides the config's addresses;"
                   " ports stay the config's, or 53/123/443/50443).")
@click.option("--mac", "macs", multiple=True, metavar="MAC",
              help="A plug's MAC (repeatable). Matches only on the segment the companion"
                   " shares with the plugs.")
@click.option("--ip", "ips", multiple=True, metavar="ADDR",
              help="A plug's IPv4 address (repeatable). Without --mac/--ip: every plug of"
                   " the inventory, by MAC and address.")
@click.option("--lan", "lans", multiple=True, metavar="CIDR",
              help="A network whose clients may reach the plugs on port 9999 (repeatable;"
                   " default: the config's 'allow'; one is required).")
@click.option("--zone", default="lan", show_default=True, metavar="ZONE",
              help="uci: the OpenWrt firewall zone the plugs are in.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), metavar="FILE",
              help="Write the rules to FILE instead of printing them (with --check or"
                   " --apply: once the tool accepted them).")
@click.option("--check", is_flag=True,
              help="Validate with the real tool (nft -c, iptables-restore --test, dnsmasq"
                   " --test); changes nothing.")
@click.option("--apply", "do_apply", is_flag=True,
              help="nft/iptables: replace our rules atomically; nothing else changes.")
@click.option("--remove", is_flag=True,
              help="Delete our table / chains and jumps (all backends unless --format).")
@click.pass_context
def firewall(ctx: click.Context, fmt: str, config_file: str | None, companion: str | None,
             macs: tuple[str, ...], ips: tuple[str, ...], lans: tuple[str, ...], zone: str,
             output: str | None, check: bool, do_apply: bool, remove: bool) -> None:
    """Firewall rules that keep the plugs off the internet, for nft, iptables, OpenWrt
    or dnsmasq: printed by default, or checked, applied or removed.

    Plugs may reach only the companion's DNS, NTP and cloud listener, DHCP, and answer
    discovery; everything else from them, to the companion or through it, is rejected
    (TCP reset / ICMP admin-prohibited, so they fail fast), IPv6 from their MACs too.
    LAN clients may reach them on TCP/UDP 9999, nothing else may. Their DNS and NTP
    aimed elsewhere (and 443/50443 when there is a cloud listener) is redirected to the
    companion. MAC matching works only on the segment the companion shares with the
    plugs (a routed packet carries the router's MAC), and traffic to a plug is matched
    by its address: give addresses too (the inventory has both).

    \b
    Examples:
      hs100local firewall --companion 192.168.1.2 --lan 192.168.1.0/24
      hs100local firewall --config /etc/hs100local/hs100local.toml --check
      hs100local firewall --mac 50:C7:BF:00:00:01 --ip 192.168.1.50 \\
          --companion 192.168.1.2 --lan 192.168.1.0/24 --apply
      hs100local firewall --format uci --companion 192.168.1.1 --lan 192.168.1.0/24
      hs100local firewall --remove
    """
    from hs100local.errors import Hs100Error

    modes = [name for name, on in (("--check", check), ("--apply", do_apply),
                                   ("--remove", remove)) if on]
    if len(modes) > 1:
        raise FirewallError(f"{modes[0]} and {modes[1]} exclude each other", 2)
    explicit = ctx.get_parameter_source("fmt") is click.core.ParameterSource.COMMANDLINE
    try:
        if remove:
            if macs or ips or lans or companion or output:
                raise FirewallError("--remove deletes every hs100local rule; it takes no"
                                    " --mac/--ip/--lan/--companion/-o", 2)
            _remove(fmt, explicit)
            return
        _act(_plan(fmt, config_file, companion, macs, ips, lans, zone), output, check,
             do_apply)
    except Hs100Error as exc:
        raise FirewallError(str(exc), exc.exit_code) from None


def _act(plan: Any, output: str | None, check: bool, do_apply: bool) -> None:
    from hs100local.firewall import apply as live
    from hs100local.firewall.render import render

    if do_apply and plan.format not in live.BACKENDS:
        raise FirewallError(f"--apply works with --format nft or iptables, not {plan.format}"
                            " (print the rules and load them yourself)", 2)
    text = render(plan)
    message = None
    if check or do_apply:  # first: a file is written only with rules the tool accepted
        message = live.check(plan) if check else live.apply(plan)
    if output:
        _write(output, text)
    if message is not None:
        emit({"action": "check" if check else "apply", "format": plan.format,
              "message": message, "plan": plan.as_dict()}, message)
    elif settings().json:
        emit(plan.as_dict())
    elif not output:
        click.echo(text, nl=False)
