"""Command-line interface: parses arguments, runs one operation, prints.

Start-up time matters (``hs100local on`` from a cron job or a shell alias), so
this module imports only click (and the tiny errors module) at the top; each
command imports what it needs.
One-shot control commands use the blocking transport: no asyncio on that path.

Exit codes: 0 ok, 1 the plug answered an error or refused, 2 usage, 3 unreachable,
timeout or protocol error. Every failure is one line on stderr
(``hs100local: error: …``), never a traceback; with ``--json`` it is also
``{"error": …, "exit": N}`` on stdout, so a script reading stdout always gets JSON.

Every command says what it acts on (its *scope*): ``outlet`` commands act on the
plug or on the ``-c`` outlet of a strip; ``device`` commands act on the whole device
and refuse ``-c`` (and an ``-H`` that names an outlet) before anything is sent —
``-c 1 reset`` must never reset the whole strip; ``local`` commands talk to no
single plug and refuse ``-H``/``-c``.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import TYPE_CHECKING, Any

import click

from hs100local.errors import one_line

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from hs100local.blocking import BlockingTransport
    from hs100local.hostport import Budget
    from hs100local.ops import Op, T
    from hs100local.targets import OpenedTarget

ENV_HOST = "HS100LOCAL_HOST"
SCOPES = ("outlet", "device", "local")


class Settings:
    """Options that may be given before or after the command name."""

    def __init__(self) -> None:
        self.host: str | None = None
        self.timeout: float | None = None  # None: the command's own default
        self.json: bool = False
        self.db: str | None = None
        self._child: str | None = None
        self._opened: OpenedTarget | None = None
        self._budget: Budget | None = None
        #: what the running command acts on (see the module docstring) and its words
        #: ("time sync")
        self.scope: str = "local"
        self.command: str = "hs100local"
        #: the command printed its JSON result (a failure after it adds no second one)
        self.emitted_json = False

    @property
    def child(self) -> str | None:
        """-c, or the outlet that -H named (an outlet alias): that needs -H resolved."""
        opened = self.open()
        return self._child if self._child is not None else opened.child

    @child.setter
    def child(self, value: str | None) -> None:
        self._child = value

    def target(self) -> str | None:
        """-H, else $HS100LOCAL_HOST (an empty -H is no plug, not "use the variable")."""
        return self.host if self.host is not None else os.environ.get(ENV_HOST)

    def check_scope(self) -> None:
        """Refuse -H/-c the running command cannot honour, before anything is sent."""
        name = self.command
        if self.scope == "device" and self._child is not None:
            raise click.UsageError(
                f"{name} acts on the whole device, not one outlet: drop -c")
        if self.scope == "local":
            given = [flag for flag, value in (("-H", self.host), ("-c", self._child))
                     if value is not None]
            if given:
                raise click.UsageError(
                    f"{name} does not talk to one plug: drop {' and '.join(given)}")

    def budget(self) -> Budget:
        """The command's network time (--timeout, default 5 s), shared by every step."""
        if self._budget is None:
            from hs100local.hostport import DEFAULT_TIMEOUT, Budget

            self._budget = Budget(self.timeout or DEFAULT_TIMEOUT)
        return self._budget

    def db_path(self) -> Path:
        """The inventory: --db, else $HS100LOCAL_DB, else the user data dir. A path the
        user gave must be in an existing folder (a typo must not look like an empty
        inventory, nor create folders)."""
        from pathlib import Path

        from hs100local.inventory import DB_ENV, default_db_path

        given = self.db or os.environ.get(DB_ENV)
        if not given:
            return default_db_path()
        path = Path(given).expanduser()
        if path.is_dir():
            source = "--db" if self.db else DB_ENV
            raise click.BadParameter(f"{str(path)!r} is a folder, not a database file",
                                     param_hint=source)
        if not path.parent.is_dir():
            source = "--db" if self.db else DB_ENV
            raise click.BadParameter(f"folder {str(path.parent)!r} does not exist",
                                     param_hint=source)
        return path

    def open(self) -> OpenedTarget:
        """Connect to the -H plug (address, host name, or inventory alias/MAC)."""
        if self._opened is None:
            from hs100local.hostport import DEFAULT_TIMEOUT
            from hs100local.targets import is_address, open_target

            target = self.target()
            if not target:
                raise click.UsageError(
                    f"no plug given: use -H HOST[:PORT]|ALIAS|MAC or set {ENV_HOST}"
                )
            name = self.command
            self._opened = open_target(
                target, db=None if is_address(target) else self.db_path(),
                timeout=self.timeout or DEFAULT_TIMEOUT, budget=self.budget(),
                whole_device=name if self.scope == "device" else None,
                outlet_given=self._child is not None,
                notify=lambda text: click.echo(f"hs100local: {one_line(text)}", err=True))
        return self._opened

    def transport(self) -> BlockingTransport:
        return self.open().transport

    def run(self, op: Op[T]) -> T:
        from hs100local.ops import run_sync
        from hs100local.targets import SYSINFO_REQUEST

        opened = self.open()

        def send(request: dict[str, Any]) -> dict[str, Any]:
            # The address check already fetched get_sysinfo: reuse it once.
            if opened.sysinfo_reply is not None and request == SYSINFO_REQUEST:
                reply, opened.sysinfo_reply = opened.sysinfo_reply, None
                return reply
            opened.sysinfo_reply = None
            return opened.transport.query(request)

        return run_sync(op, send)

    def close(self) -> None:
        if self._opened is not None:
            self._opened.transport.close()


class Number(click.FloatRange):
    """A FloatRange that also refuses nan and infinity (FloatRange lets them through, and
    a socket timeout of nan is a traceback)."""

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        import math

        result = super().convert(value, param, ctx)
        if not math.isfinite(result):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return result


#: the longest wait an option may ask for (a socket or event-loop timeout beyond
#: about 10**9 s overflows)
MAX_SECONDS = 10_000_000


def _store(name: str):
    def callback(ctx: click.Context, _param: click.Parameter, value: Any) -> None:
        if value is not None and value is not False:
            if name in ("host", "child") and not str(value).strip():
                raise click.BadParameter("is empty", param=_param)
            setattr(ctx.ensure_object(Settings), name, value)

    return callback


def _complete_target(ctx: click.Context, _param: click.Parameter,
                     incomplete: str) -> list[Any]:
    """-H completes the inventory's aliases (plugs and outlets) and MACs."""
    from click.shell_completion import CompletionItem

    try:
        path = ctx.ensure_object(Settings).db_path()
        if not path.exists():
            return []
        from hs100local.inventory import Inventory

        with Inventory(path) as inventory:
            records = inventory.plugs()
    except Exception:  # completion must never print a traceback into the shell
        return []
    items: list[tuple[str, str]] = []
    for r in records:
        what = f"{r.model} {r.host}"
        if r.alias:
            items.append((r.alias, what))
        items.append((r.mac, r.alias or what))
        items += [(c.alias, f"outlet {c.index} of {r.alias or r.mac}")
                  for c in r.children if c.alias]
    key = incomplete.casefold()
    seen: set[str] = set()
    found = []
    for value, help_text in items:
        if value.casefold().startswith(key) and value not in seen:
            seen.add(value)
            found.append(CompletionItem(value, help=help_text))
    return found


_TARGET = (
    click.option(
        "-H", "--host", metavar="HOST[:PORT]|ALIAS|MAC", expose_value=False,
        callback=_store("host"), shell_complete=_complete_target,
        help=f"Plug address (port 9999 by default), or an alias/MAC from the inventory "
             f"(env {ENV_HOST}).",
    ),
    click.option(
        "-c", "--child", metavar="INDEX|ID|ALIAS", expose_value=False, callback=_store("child"),
        help="Power-strip outlet: 1-based index, child id or alias (commands that act on "
             "the whole device refuse it).",
    ),
)
_TIMEOUT = click.option(
    "--timeout", type=Number(min=0.1, max=3600), metavar="SECONDS", expose_value=False,
    callback=_store("timeout"),
    help="How long the whole command may wait on the network (default 5; discover: the "
         "listening window, default 3; audit: per plug, default 3).",
)
_JSON_DB = (
    click.option(
        "--json", "json_", is_flag=True, default=False, expose_value=False,
        callback=_store("json"), help="Print machine-readable JSON (errors too).",
    ),
    click.option(
        "--db", metavar="PATH", expose_value=False, callback=_store("db"),
        help="Plug inventory database (env HS100LOCAL_DB; default in the user data dir).",
    ),
)


def _apply(options: tuple[Any, ...], fn: Any) -> Any:
    for option in reversed(options):
        fn = option(fn)
    return fn


def common(fn):
    """Accept the global options after the command name too (``hs100local on -H x``)."""
    return _apply((*_TARGET, _TIMEOUT, *_JSON_DB), fn)


def output_options(fn):
    """--timeout/--json/--db for commands that talk to plugs but not to one -H plug."""
    return _apply((_TIMEOUT, *_JSON_DB), fn)


def json_db_options(fn):
    """--json/--db for commands that only read the database."""
    return _apply(_JSON_DB, fn)


def settings() -> Settings:
    return click.get_current_context().ensure_object(Settings)


def emit(data: Any, human: str | list[str] | None = None) -> None:
    """Print ``data`` as JSON with --json, else the human text."""
    s = settings()
    if s.json:
        import json

        click.echo(json.dumps(data, ensure_ascii=False))
        s.emitted_json = True
    elif human is not None:
        click.echo(human if isinstance(human, str) else "\n".join(human))


def _power(on: bool) -> str:
    return "Power ON" if on else "Power OFF"


class Failure(click.ClickException):
    """A failure with its exit code; ``data`` joins the ``--json`` error object, and
    ``reported`` says the command already printed its JSON result (then the JSON error
    object is not printed a second time)."""

    def __init__(self, message: str, exit_code: int, *, data: dict[str, Any] | None = None,
                 reported: bool = False) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.data = data or {}
        self.reported = reported


class _Scoped:
    """What a command acts on (``scope``, see the module docstring); -H/-c it cannot
    honour are refused before its callback runs."""

    scope: str

    def __init__(self, *args: Any, scope: str = "local", **kwargs: Any) -> None:
        if scope not in SCOPES:
            raise ValueError(f"scope {scope!r} is not one of {SCOPES}")
        super().__init__(*args, **kwargs)
        self.scope = scope

    def invoke(self, ctx: click.Context) -> Any:
        return _invoke_scoped(self, ctx, super().invoke)  # type: ignore[misc]


class ScopedCommand(_Scoped, click.Command):
    """A command with a scope."""


class ScopedGroup(_Scoped, click.Group):
    """A group with a scope of its own (for ``time``, ``emeter`` without a subcommand);
    its subcommands are scoped commands too."""

    command_class = ScopedCommand
    group_class = type  # subgroups are ScopedGroups

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.callback is not None and self.invoke_without_command:
            self.callback = _checked_alone(self.callback)


def _checked_alone(callback: Callable[..., Any]) -> Callable[..., Any]:
    """A group's callback that checks the group's own scope when it runs without a
    subcommand (only inside the callback does click know whether one follows)."""
    import functools

    @functools.wraps(callback)
    def checked(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        if ctx.invoked_subcommand is None:
            ctx.ensure_object(Settings).check_scope()
        return callback(*args, **kwargs)

    return checked


def _invoke_scoped(command: Any, ctx: click.Context,
                   invoke: Callable[[click.Context], Any]) -> Any:
    from hs100local.errors import Hs100Error

    s = ctx.ensure_object(Settings)
    names, level = [], ctx
    while level.parent is not None:  # the command's own words, without the program's
        names.append(level.info_name or "")
        level = level.parent
    s.scope, s.command = command.scope, " ".join(reversed(names)) or "hs100local"
    try:
        if not isinstance(command, click.Group):
            s.check_scope()
        return invoke(ctx)
    except click.UsageError as exc:
        if exc.ctx is None:
            exc.ctx = ctx
        raise
    except Hs100Error as exc:
        if exc.exit_code == 2:  # a selector names nothing: usage, on this command
            raise click.UsageError(one_line(str(exc)), ctx) from None
        raise


def _wants_json(args: list[str]) -> bool:
    """--json among the options (before a ``--``): a failure while parsing still
    owes the script its JSON."""
    head = args[: args.index("--")] if "--" in args else args
    return "--json" in head


def report_failure(message: str, exit_code: int, *, as_json: bool,
                   data: dict[str, Any] | None = None, reported: bool = False) -> None:
    """The one way a failure is shown: one line on stderr, and JSON on stdout (neither
    may fail in turn: a closed pipe ends the output, not the exit code)."""
    text = one_line(message)
    with contextlib.suppress(OSError):
        click.echo(f"hs100local: error: {text}", err=True)
    if as_json and not reported:
        import json

        with contextlib.suppress(OSError):
            click.echo(json.dumps({"error": text, "exit": exit_code, **(data or {})},
                                  ensure_ascii=False))


class RootGroup(ScopedGroup):
    """The root: runs a command and turns every failure into one line and an exit code."""

    group_class = ScopedGroup

    def invoke(self, ctx: click.Context) -> Any:
        from hs100local.errors import Hs100Error

        try:
            return super().invoke(ctx)  # a TargetError (exit 2) is a UsageError by now
        except Failure as exc:
            exc.reported = exc.reported or ctx.ensure_object(Settings).emitted_json
            raise
        except Hs100Error as exc:
            raise Failure(str(exc), exc.exit_code,
                          reported=ctx.ensure_object(Settings).emitted_json) from None
        except OSError as exc:
            # stdout closed under us (`| head -0`): the output is cut short, as by SIGPIPE,
            # and the exit code says so (128 + 13), not "the plug refused" (1, click's)
            import errno

            if exc.errno != errno.EPIPE:
                raise
            with contextlib.suppress(OSError):
                sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - nothing to flush at exit
            raise click.exceptions.Exit(141) from None
        finally:
            if isinstance(ctx.obj, Settings):
                ctx.obj.close()

    def main(self, args: Any = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True,
             **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        argv = list(sys.argv[1:] if args is None else args)
        as_json = _wants_json(argv)
        try:
            result = super().main(argv, prog_name, complete_var, False, **extra)
        except Failure as exc:
            report_failure(exc.format_message(), exc.exit_code, as_json=as_json,
                           data=exc.data, reported=exc.reported)
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            if type(exc).__name__ == "NoArgsIsHelpError" and exc.ctx is not None:
                # click >= 8.2 raises this for a group without its command: show the help
                # (as click 8.1 did), not the help text folded into one error line
                click.echo(exc.ctx.get_help())
                sys.exit(0)
            message = exc.format_message()
            if exc.ctx is not None:
                message += f"; see '{exc.ctx.command_path} --help'"
            report_failure(message, 2, as_json=as_json)
            sys.exit(2)
        except click.ClickException as exc:
            report_failure(exc.format_message(), exc.exit_code, as_json=as_json)
            sys.exit(exc.exit_code)
        except click.Abort as exc:
            if isinstance(exc.__cause__ or exc.__context__, EOFError):
                report_failure("no input for a prompt: give the option on the command line",
                               2, as_json=as_json)
                sys.exit(2)
            report_failure("interrupted", 130, as_json=as_json)
            sys.exit(130)
        sys.exit(result if isinstance(result, int) else 0)


@click.group(cls=RootGroup, scope="local",
             context_settings={"help_option_names": ["-h", "--help"]})
@common
@click.version_option(package_name="hs100local", message="hs100local %(version)s")
def cli() -> None:
    """Control TP-Link HS100-family plugs locally, no cloud (legacy port 9999 firmware).

    \b
    Examples:
      hs100local -H 192.168.1.50 on
      hs100local -H 192.168.1.60 -c 2 state --json
      hs100local demo                         # the companion on loopback, no plug needed
    """


# ------------------------------------------------------------------ relay


@cli.command(scope="outlet")
@common
def on() -> None:
    """Switch the plug (or the -c outlet; all outlets of a strip) on."""
    from hs100local import ops

    s = settings()
    s.run(ops.set_relay(True, s.child))
    emit({"state": "on"}, _power(True))


@cli.command(scope="outlet")
@common
def off() -> None:
    """Switch the plug (or the -c outlet; all outlets of a strip) off."""
    from hs100local import ops

    s = settings()
    s.run(ops.set_relay(False, s.child))
    emit({"state": "off"}, _power(False))


@cli.command(scope="outlet")
@common
def toggle() -> None:
    """Flip the relay (or the -c outlet's); a whole strip goes off if any outlet is on."""
    from hs100local import ops

    s = settings()
    new = s.run(ops.toggle(s.child))
    emit({"state": "on" if new else "off"}, _power(new))


@cli.command(scope="outlet")
@common
def state() -> None:
    """Print Power ON / Power OFF (one line per outlet on a strip, or the -c outlet)."""
    from hs100local import ops

    s = settings()
    info = s.run(ops.sysinfo())
    if s.child is not None or not info.children:
        if s.child is not None:
            outlet = ops.find_outlet(info, s.child)
            is_on, data = outlet.is_on, outlet.as_dict()
        else:
            is_on, data = bool(info.relay_on), {}
        emit({**data, "state": "on" if is_on else "off"}, _power(is_on))
        return
    outlets = [o.as_dict() for o in info.children]
    emit(
        {"state": "on" if any(o.is_on for o in info.children) else "off", "outlets": outlets},
        [f"{o.index} {o.alias}: {_power(o.is_on)}" for o in info.children],
    )


def _reading_line(reading: Any) -> str:
    return (f"{reading.voltage_v:.1f} V  {reading.current_a:.3f} A  {reading.power_w:.1f} W  "
            f"total {reading.total_kwh:.3f} kWh")


@cli.command(scope="outlet")
@common
def info() -> None:
    """Summary of get_sysinfo (--json prints the whole object); with -c, that outlet."""
    from hs100local import ops

    s = settings()
    if s.child is not None:
        strip, outlet, reading = s.run(ops.outlet_info(s.child))
        data: dict[str, Any] = outlet.as_dict()
        lines = [f"Outlet:    {outlet.index} of {strip.alias or strip.model} ({strip.mac})",
                 f"Alias:     {outlet.alias}",
                 f"ID:        {outlet.id}",
                 f"State:     {'ON' if outlet.is_on else 'OFF'}"
                 + (f" for {outlet.on_time} s" if outlet.is_on else "")]
        if reading is not None:
            data["emeter"] = reading.as_dict()
            lines.append(f"Meter:     {_reading_line(reading)}")
        emit(data, [one_line(line) for line in lines])
        return
    info = s.run(ops.sysinfo())
    lines = [
        f"Alias:     {info.alias}",
        f"Model:     {info.model} (hardware {info.hw_ver}, firmware {info.sw_ver})",
        f"MAC:       {info.mac}",
        f"Device ID: {info.device_id}",
    ]
    if info.relay_on is not None:
        lines.append(f"State:     {'ON' if info.relay_on else 'OFF'}"
                     + (f" for {info.on_time} s" if info.relay_on else ""))
    lines.append(f"LED:       {'on' if info.led_on else 'off'}")
    if info.rssi is not None:
        lines.append(f"Wi-Fi:     {info.rssi} dBm")
    lines.append(f"Features:  {', '.join(info.features) or '-'}"
                 + (" (energy meter)" if info.has_emeter else ""))
    for o in info.children:
        lines.append(f"Outlet {o.index}:  {'ON ' if o.is_on else 'OFF'} {o.alias}  ({o.id})")
    emit(info.raw, [one_line(line) for line in lines])


@cli.command(scope="outlet")
@common
@click.argument("new", required=False)
def alias(new: str | None) -> None:
    """Show the alias, or set it to NEW and read it back (the -c outlet's on a strip)."""
    from hs100local import ops

    s = settings()
    if new is not None:
        if not new.strip():
            raise click.BadParameter("an alias cannot be empty", param_hint="NEW")
        try:
            new.encode("utf-8")
        except UnicodeEncodeError:  # bytes the terminal's encoding could not decode
            raise click.BadParameter("not valid UTF-8 text", param_hint="NEW") from None
        if len(new.encode()) > 31:
            raise click.BadParameter("at most 31 bytes", param_hint="NEW")
        if not new.isprintable():
            raise click.BadParameter("no control characters", param_hint="NEW")
        from hs100local.targets import remember_sysinfo

        info = s.run(ops.set_alias_verified(new, s.child))
        if s.open().record is not None:  # reached through the inventory: the new name
            remember_sysinfo(s.open(), info, s.db_path())  # works at once, the old not
        emit({"alias": new}, one_line(new))
        return
    info = s.run(ops.sysinfo())
    name = ops.find_outlet(info, s.child).alias if s.child is not None else info.alias
    emit({"alias": name}, one_line(name))


@cli.command(scope="device")
@common
@click.argument("switch", required=False, type=click.Choice(["on", "off"]))
def led(switch: str | None) -> None:
    """Show the status LED setting, or switch it on/off and read it back."""
    from hs100local import ops

    s = settings()
    if switch is not None:
        s.run(ops.set_led_verified(switch == "on"))
        emit({"led": switch}, f"LED {switch}")
        return
    value = "on" if s.run(ops.sysinfo()).led_on else "off"
    emit({"led": value}, f"LED {value}")


@cli.command(scope="device")
@common
@click.option("--delay", type=click.IntRange(0, 65535), default=1, show_default=True,
              help="Seconds before the plug reboots.")
def reboot(delay: int) -> None:
    """Reboot the whole device (the relays keep their state)."""
    from hs100local import ops

    settings().run(ops.reboot(delay))
    emit({"reboot": True, "delay": delay}, f"Rebooting in {delay} s")


@cli.command(scope="device")
@common
@click.option("--yes", is_flag=True, help="Confirm: this erases alias, Wi-Fi and rules.")
@click.option("--delay", type=click.IntRange(0, 65535), default=1, show_default=True,
              help="Seconds before the plug resets.")
def reset(yes: bool, delay: int) -> None:
    """Factory-reset the whole device (needs --yes; it returns to set-up mode)."""
    from hs100local import ops

    if not yes:
        raise click.UsageError("factory reset erases the plug's settings; add --yes to confirm")
    settings().run(ops.factory_reset(delay))
    emit({"reset": True, "delay": delay}, f"Factory reset in {delay} s")


# ------------------------------------------------------------------- time


def _zone_label(index: int | None) -> str:
    from hs100local.timezones import zone

    if index is None:
        return "zone unknown"
    try:
        return f"zone {index}: {zone(index).description}"
    except ValueError:
        return f"zone {index} (unknown index)"


def _tz_index(tz_index: int | None, zone_name: str | None) -> int:
    from hs100local.timezones import host_index, index_for_zone

    if tz_index is not None and zone_name is not None:
        raise click.UsageError("give --tz-index or --zone, not both")
    if tz_index is not None:
        return tz_index
    if zone_name is not None:
        try:
            return index_for_zone(zone_name)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--zone") from None
    return host_index()


_tz_options = (
    click.option("--tz-index", type=click.IntRange(0, 109), default=None,
                 help="Plug time-zone index 0-109 (default: this host's zone)."),
    click.option("--zone", "zone_name", metavar="IANA", default=None,
                 help="Time zone by name, e.g. Europe/Berlin (mapped to an index)."),
)


@cli.group(invoke_without_command=True, scope="device")
@common
@click.pass_context
def time(ctx: click.Context) -> None:
    """Show the plug's clock and its offset from this host (the whole device's clock)."""
    if ctx.invoked_subcommand is not None:
        return
    from hs100local import ops
    from hs100local.errors import ProtocolError
    from hs100local.timezones import host_now

    plug = settings().run(ops.get_time())
    data: dict[str, Any] = plug.as_dict()
    offset = None
    if plug.tz_index is not None and 0 <= plug.tz_index <= 109:
        try:
            offset = ops.plug_offset(plug, host_now(plug.tz_index))
        except ProtocolError:  # an impossible date: show it, the offset is unknown
            offset = None
        data["offset_s"] = None if offset is None else round(offset, 1)
    human = f"{plug.isoformat().replace('T', ' ')} ({_zone_label(plug.tz_index)})"
    if offset is not None:
        human += f", {offset:+.1f} s from this host"
    emit(data, human)


_threshold_option = click.option(
    "--threshold", type=Number(min=0, max=MAX_SECONDS), default=2.0, show_default=True,
    metavar="SECONDS",
    help="Seconds the clock read back may be off before the command fails (with --all: "
         "before a clock is set).")


def _clock_result(result: Any, threshold: float, verb: str) -> None:
    """Print a set-and-read-back result; a clock that did not take is exit 1."""
    from hs100local import ops

    problem = ops.clock_problem(result, threshold)
    data = {**result.as_dict(), "ok": problem is None}
    if problem is not None or result.offset_s is None:
        raise Failure(problem or "no offset", 1, data=data)
    offset = round(result.offset_s, 1) + 0.0  # no "-0.0"
    emit(data,
         f"Clock {verb} {result.sent.replace('T', ' ')} ({_zone_label(result.tz_index)}) "
         f"via {result.method}; read back {result.read_back.isoformat().replace('T', ' ')}, "
         f"{offset:+.1f} s (the plug counts whole seconds: ±0.5 s is exact)")


@time.command("sync", scope="device")
@common
@_tz_options[0]
@_tz_options[1]
@click.option("--all", "every", is_flag=True,
              help="Every plug of the inventory: check each clock, set only the wrong ones.")
@_threshold_option
def time_sync(tz_index: int | None, zone_name: str | None, every: bool, threshold: float) -> None:
    """Set the plug to this host's time and zone, read it back, report the offset.

    The time is sent at the start of one of this host's seconds (a wait of up to a
    second), so the plug, which counts whole seconds from when it is set, ticks with
    the host; the clock is read back half a second later. Exit 1 when the plug did
    not take it: another zone than asked, or more than --threshold seconds off.

    With --all, the time keeper checks every plug in the inventory concurrently and
    sets those whose clock was lost (year 2000 after a power cut), is off by more
    than --threshold, or is in another zone; each action is recorded as a "time"
    event. Exit 1 if a plug refused to be set, 3 if one could not be reached
    (--timeout is then per plug, default 3).
    """
    from hs100local import ops
    from hs100local.timezones import host_now

    if every:
        _time_sync_all(tz_index, zone_name, threshold)
        return
    from hs100local.timezones import wall_time_problem

    index = _tz_index(tz_index, zone_name)
    ambiguous = wall_time_problem(index, host_now(index))
    if ambiguous is not None:  # refused before anything is sent
        raise Failure(f"not now: it is {ambiguous}; sync again after that hour", 1)
    _clock_result(settings().run(ops.sync_time(index, host_now)), threshold, "set to")


def _time_sync_all(tz_index: int | None, zone_name: str | None, threshold: float) -> None:
    import asyncio

    from hs100local.events import EventStore
    from hs100local.inventory import Inventory
    from hs100local.timekeeper import TimeKeeper

    s = settings()
    if s.host is not None:
        raise click.UsageError("--all works on the inventory; leave out -H")
    default = None if tz_index is None and zone_name is None else _tz_index(tz_index, zone_name)
    path = s.db_path()

    async def one_pass() -> list[Any]:
        if not path.exists():
            return []
        with Inventory(path) as inventory, EventStore(path) as events:  # on the loop's thread
            keeper = TimeKeeper(inventory, events=events, threshold=threshold,
                                default_zone=default,
                                timeout=s.timeout if s.timeout is not None else 3.0)
            return await keeper.run_once()

    checks = asyncio.run(one_pass())
    header = ("ALIAS", "HOST", "STATUS", "WHY", "OFFSET", "METHOD / NOTE")
    rows = []
    for c in checks:
        before = "-" if c.offset_before_s is None else f"{c.offset_before_s:+.1f} s"
        if c.offset_after_s is not None:
            before += f" -> {c.offset_after_s:+.1f} s"
        note = " ".join(x for x in (c.method, c.error) if x) or "-"
        rows.append((one_line(c.alias) or "-", _address(c), c.status,
                     ",".join(c.reasons) or "-", before, one_line(note)))
    emit([c.as_dict() for c in checks],
         _table(header, rows) if checks else
         ["No plugs recorded yet: run 'hs100local discover'."])
    failed = {status: sum(c.status == status for c in checks)
              for status in ("unreachable", "refused")}
    if any(failed.values()):
        raise Failure(", ".join(f"{n} plug(s) {status}" for status, n in failed.items() if n),
                      3 if failed["unreachable"] else 1, reported=True)


@time.command("set", scope="device")
@common
@click.argument("when", metavar="YYYY-MM-DDTHH:MM:SS")
@_tz_options[0]
@_tz_options[1]
@_threshold_option
def time_set(when: str, tz_index: int | None, zone_name: str | None, threshold: float) -> None:
    """Set the plug's wall clock to WHEN (local time in the plug's zone) and read it
    back half a second later; exit 1 when the plug did not take it."""
    from datetime import datetime

    from hs100local import ops
    from hs100local.timezones import host_now

    try:
        moment = datetime.fromisoformat(when)
    except ValueError:
        raise click.BadParameter(
            f"{when!r} is not YYYY-MM-DDTHH:MM:SS", param_hint="WHEN"
        ) from None
    if moment.tzinfo is not None:
        raise click.BadParameter("give local time in the plug's zone, without an offset; "
                                 "choose the zone with --zone/--tz-index", param_hint="WHEN")
    if not 2000 <= moment.year <= 2099:
        raise click.BadParameter("the plugs keep years 2000 to 2099", param_hint="WHEN")
    from hs100local.timezones import wall_time_problem

    s = settings()
    moment = moment.replace(microsecond=0)
    if tz_index is None and zone_name is None:
        index = s.run(ops.get_time()).tz_index
        if index is None:
            raise click.UsageError("the plug does not report its zone; give --tz-index")
        if not 0 <= index <= 109:
            raise click.UsageError(f"the plug reports zone {index}, not one of 0-109; "
                                   f"give --tz-index or --zone")
    else:
        index = _tz_index(tz_index, zone_name)
    problem = wall_time_problem(index, moment)
    if problem is not None:  # before anything is set
        raise click.BadParameter(problem, param_hint="WHEN")
    result = s.run(ops.set_time_verified(moment, index, host_now))
    _clock_result(result, threshold, "set to")


# ----------------------------------------------------------- energy meter


@cli.group(invoke_without_command=True, scope="outlet")
@common
@click.pass_context
def emeter(ctx: click.Context) -> None:
    """Realtime energy reading (HS110, KP115, HS300 outlets; each outlet and the sum
    on a strip, or the -c outlet)."""
    if ctx.invoked_subcommand is not None:
        return
    from hs100local import ops

    s = settings()
    readings = s.run(ops.emeter_strip(s.child))
    if len(readings) == 1 and (readings[0][0] is None or s.child is not None):
        outlet, reading = readings[0]
        data = reading.as_dict()
        if outlet is not None:
            data = {**outlet.as_dict(), **data}
        emit(data, _reading_line(reading))
        return
    rows, lines = [], []
    for outlet, reading in readings:
        assert outlet is not None
        rows.append({**outlet.as_dict(), **reading.as_dict()})
        lines.append(one_line(f"{outlet.index} {outlet.alias}: {reading.power_w:.1f} W  "
                              f"total {reading.total_kwh:.3f} kWh"))
    total_w = sum(r.power_w for _o, r in readings)
    lines.append(f"all outlets: {total_w:.1f} W")
    emit({"outlets": rows, "power_w": round(total_w, 3)}, lines)


def _today() -> Any:
    from datetime import date

    return date.today()


def _history(year: int, month: int | None) -> None:
    """Print day or month statistics: a list for a plug or outlet; for a whole strip a
    table with a column per outlet and their sum."""
    from hs100local import ops

    s = settings()
    found = s.run(ops.emeter_history(year, month, s.child))

    def label(e: Any) -> str:
        return f"{e.year:04d}-{e.month:02d}" + ("" if e.day is None else f"-{e.day:02d}")

    if len(found) == 1 and (found[0][0] is None or s.child is not None):
        entries = found[0][1]
        emit([e.as_dict() for e in entries],
             [f"{label(e)}  {e.energy_kwh:.3f} kWh" for e in entries] or ["no data"])
        return
    per_outlet = [(outlet, {label(e): e for e in entries}) for outlet, entries in found]
    periods = sorted({key for _o, by in per_outlet for key in by})
    totals = []
    for key in periods:
        some = next(by[key] for _o, by in per_outlet if key in by)
        kwh = sum(by[key].energy_kwh for _o, by in per_outlet if key in by)
        totals.append({**some.as_dict(), "energy_kwh": round(kwh, 4)})
    header = ("DATE", *(f"#{o.index}" for o, _by in per_outlet if o is not None), "ALL (kWh)")
    rows = [(key, *(f"{by[key].energy_kwh:.3f}" if key in by else "-"
                    for _o, by in per_outlet), f"{t['energy_kwh']:.3f}")
            for key, t in zip(periods, totals, strict=True)]
    legend = "outlets: " + ", ".join(f"#{o.index} {one_line(o.alias)}"
                                     for o, _by in per_outlet if o is not None)
    emit({"outlets": [{**o.as_dict(), "entries": [e.as_dict() for e in entries]}
                      for o, entries in found if o is not None],
          "total": totals},
         [*_table(header, rows), legend] if periods else ["no data"])


@emeter.command("day", scope="outlet")
@common
@click.option("--year", type=click.IntRange(2000, 2099), default=None, help="Default: this year.")
@click.option("--month", type=click.IntRange(1, 12), default=None, help="Default: this month.")
def emeter_day(year: int | None, month: int | None) -> None:
    """Energy per day of a month (per outlet and in sum on a strip)."""
    today = _today()
    _history(year or today.year, month or today.month)


@emeter.command("month", scope="outlet")
@common
@click.option("--year", type=click.IntRange(2000, 2099), default=None, help="Default: this year.")
def emeter_month(year: int | None) -> None:
    """Energy per month of a year (per outlet and in sum on a strip)."""
    _history(year or _today().year, None)


# ------------------------------------------------------------------ cloud


@cli.group(scope="device")
def cloud() -> None:
    """Cloud binding: show it, unbind, or point the plug at another server."""


@cloud.command("info", scope="device")
@common
def cloud_info() -> None:
    """Show whether and where the plug is bound to the vendor cloud."""
    from hs100local import ops

    c = settings().run(ops.cloud_info())
    emit(c.as_dict(), [one_line(line) for line in (
        f"Server:    {c.server or '-'}",
        f"Bound:     {'yes, to ' + c.username if c.bound else 'no'}",
        f"Connected: {'yes' if c.connected else 'no'}",
    )])


@cloud.command("unbind", scope="device")
@common
def cloud_unbind() -> None:
    """Remove the plug's binding to a cloud account (read back)."""
    from hs100local import ops

    settings().run(ops.cloud_unbind_verified())
    emit({"bound": False}, "Unbound")


@cloud.command("set-server", scope="device")
@common
@click.argument("server")
def cloud_set_server(server: str) -> None:
    """Point the plug's cloud client at SERVER (e.g. this companion; read back)."""
    from hs100local import ops

    if not server.strip() or not server.isprintable():
        raise click.BadParameter("give a host name or address", param_hint="SERVER")
    settings().run(ops.cloud_set_server_verified(server))
    emit({"server": server}, f"Cloud server set to {one_line(server)}")


# ------------------------------------------------------------------ Wi-Fi


@cli.group(scope="device")
def wifi() -> None:
    """Wi-Fi onboarding: scan for networks, join one."""


@wifi.command("scan", scope="device")
@common
@click.option("--cached", is_flag=True, help="Return the plug's last scan instead of a new one.")
def wifi_scan(cached: bool) -> None:
    """List the networks the plug can see."""
    from hs100local import ops

    aps = settings().run(ops.wifi_scan(refresh=not cached))
    emit([a.as_dict() for a in aps],
         [one_line(f"{a.ssid:32} {a.as_dict()['security']:5} "
                   f"{'' if a.rssi is None else str(a.rssi) + ' dBm'}".rstrip()) for a in aps]
         or ["no networks"])


@wifi.command("join", scope="device")
@common
@click.argument("ssid")
@click.option("--password", default=None,
              help="Network passphrase (asked for, hidden, when not given).")
@click.option("--key-type", type=click.IntRange(0, 3), default=3, show_default=True,
              help="0 open, 1 WEP, 2 WPA, 3 WPA2.")
def wifi_join(ssid: str, password: str | None, key_type: int) -> None:
    """Make the plug join SSID (it leaves its current network, so nothing can be read
    back: find it there with 'hs100local discover')."""
    from hs100local import ops

    if password is None:  # asked here, after -c/-H were checked: not before a refusal
        password = click.prompt("Password", hide_input=True, err=True)
    settings().run(ops.wifi_join(ssid, password, key_type))
    emit({"ssid": ssid, "key_type": key_type}, f"Plug told to join {one_line(ssid)!r}")


# ------------------------------------------------------------------ rules


def _rule_table(rules: list[dict[str, Any]], row: Callable[[dict[str, Any]], dict[str, str]],
                what: str) -> None:
    """Rules as a table (the firmware's objects with --json)."""
    rows = [row(r) for r in rules]
    if not rows:
        emit(rules, f"no {what} rules")
        return
    header = tuple(key.upper() for key in rows[0])
    emit(rules, _table(header, [tuple(one_line(v) or "-" for v in r.values()) for r in rows]))


@cli.group(scope="outlet")
def schedule() -> None:
    """Schedule rules stored on the plug (per outlet on a strip, with -c)."""


@schedule.command("list", scope="outlet")
@common
def schedule_list() -> None:
    """List the schedule rules: days, time, action, enabled (--json: the rule objects)."""
    from hs100local import ops
    from hs100local.rules import schedule_row

    s = settings()
    _rule_table(s.run(ops.schedule_rules(s.child)), schedule_row, "schedule")


@cli.group(scope="outlet")
def countdown() -> None:
    """Countdown timer rules (count_down or countdown module; per outlet with -c)."""


@countdown.command("list", scope="outlet")
@common
def countdown_list() -> None:
    """List the countdown rules: delay, action, enabled (--json: the rule objects)."""
    from hs100local import ops
    from hs100local.rules import countdown_row

    s = settings()
    _rule_table(s.run(ops.countdown_rules(s.child)), countdown_row, "countdown")


# -------------------------------------------------------------------- raw


def _first_error(reply: Any, path: str = "") -> tuple[str, Any] | None:
    if isinstance(reply, dict):
        code = reply.get("err_code")
        if isinstance(code, int) and code != 0:
            return path or "reply", reply
        for key, value in reply.items():
            found = _first_error(value, f"{path}.{key}" if path else key)
            if found:
                return found
    return None


@cli.command(scope="device")
@common
@click.argument("request")
def raw(request: str) -> None:
    """Send REQUEST verbatim and print the reply as JSON.

    REQUEST is a JSON object of modules, each an object of methods with their
    parameters (an object, or null), e.g. '{"system":{"get_sysinfo":{}}}'; it is
    checked before anything is sent. For one outlet of a strip put
    "context":{"child_ids":["ID"]} in it yourself (-c is refused: raw adds nothing).
    """
    import json

    from hs100local.protocol import check_request, is_read_only, loads

    try:
        checked = check_request(request.encode("utf-8"))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="REQUEST") from None
    s = settings()
    reply = loads(s.transport().query_bytes(request.encode("utf-8"),
                                            repeatable=is_read_only(checked)))
    click.echo(json.dumps(reply, ensure_ascii=False, indent=None if s.json else 2))
    error = _first_error(reply)
    if error:
        where, body = error
        code, text = body.get("err_code"), body.get("err_msg", "")
        raise Failure(f"plug answered error {code} for {where}: {text}", 1, reported=True)


# -------------------------------------------------------------- discovery


def _address(p: Any) -> str:
    """The host, with the port only when it is not a plug's usual one (emulators)."""
    return p.host if p.port in (9999, 20002, 20004) else f"{p.host}:{p.port}"


def _firmware(p: Any) -> str:
    return one_line(p.sw_ver or (f"hw {p.hw_ver}" if p.hw_ver else "-"))


def _protocol(p: Any) -> str:
    return p.protocol if p.controllable else f"{p.protocol} (no local control)"


def _plug_rows(plugs: list[Any]) -> list[str]:
    """A table: one row per device, outlets indented below their strip."""
    header = ("HOST", "MAC", "MODEL", "ALIAS", "STATE", "FIRMWARE", "PROTOCOL")
    rows: list[tuple[str, ...]] = []
    for p in plugs:
        rows.append((_address(p), p.mac, p.model or "-", one_line(p.alias) or "-",
                     p.state or "-", _firmware(p), _protocol(p)))
        for c in p.children:
            rows.append(("", f"  outlet {c.index}", "", one_line(c.alias),
                         "on" if c.is_on else "off", "", ""))
    return _table(header, rows)


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
            for r in [header, *rows]]


def _open_inventory(create: bool) -> Any:
    """The inventory named by --db/env/default; None if it does not exist and not ``create``."""
    from hs100local.inventory import Inventory

    path = settings().db_path()
    if not create and not path.exists():
        return None
    return Inventory(path)


@cli.command(scope="local")
@output_options
@click.option("--target", "targets", multiple=True, metavar="HOST[:PORT]",
              help="Also probe this address (unicast or broadcast); repeatable.")
@click.option("-i", "--interface", "interfaces", multiple=True, metavar="IFACE",
              help="Broadcast only on these interfaces (repeatable; default: all IPv4 ones).")
@click.option("--no-broadcast", is_flag=True,
              help="Probe only the --target addresses.")
@click.option("--expect", type=click.IntRange(min=1), metavar="N",
              help="Stop as soon as N devices answered (exit 3 if fewer did).")
@click.option("--scan", "networks", multiple=True, metavar="CIDR",
              help="TCP-sweep port 9999 of these networks instead of broadcasting; repeatable.")
@click.option("--concurrency", type=click.IntRange(1, 4096), default=256, show_default=True,
              help="Connections open at once during --scan.")
@click.option("--no-save", is_flag=True, help="Do not record what was found in the inventory.")
def discover(targets: tuple[str, ...], interfaces: tuple[str, ...], no_broadcast: bool,
             expect: int | None, networks: tuple[str, ...], concurrency: int,
             no_save: bool) -> None:
    """Find plugs: broadcast on every interface (or sweep --scan CIDR); list and record them.

    \b
    Broadcast discovery probes UDP 9999 (legacy firmware) and UDP 20002/20004
    (newer KLAP firmware, which closed port 9999 and cannot be controlled
    locally). It listens for --timeout seconds (default 3), re-sending the probe
    to ride out packet loss, and stops early with --expect N.

    \b
    Examples:
      hs100local discover
      hs100local discover -i eth1 --expect 4 --json
      hs100local discover --scan 192.168.1.0/24
    """
    import asyncio

    from hs100local import discovery
    from hs100local.errors import PlugTimeoutError

    s = settings()
    timeout = s.timeout or discovery.DEFAULT_DISCOVERY_TIMEOUT
    if networks:
        if targets or interfaces or no_broadcast or expect:
            raise click.UsageError(
                "--scan sweeps by TCP; it does not combine with --target/--interface/"
                "--no-broadcast/--expect"
            )
        bar = None
        if not s.json and sys.stderr.isatty():
            total = len(discovery.sweep_addresses(networks))
            bar = click.progressbar(length=total, label="Sweeping", file=sys.stderr)
        try:
            if bar is not None:
                bar.__enter__()
            result = asyncio.run(discovery.scan(
                networks, concurrency=concurrency, timeout=timeout,
                progress=(lambda _d, _t: bar.update(1)) if bar is not None else None,
            ))
        finally:
            if bar is not None:
                bar.__exit__(None, None, None)
    else:
        if no_broadcast and not targets:
            raise click.UsageError("--no-broadcast needs at least one --target")
        result = asyncio.run(discovery.discover(
            targets=targets, interfaces=list(interfaces) or None,
            broadcast=not no_broadcast, timeout=timeout, expect=expect,
        ))

    changes: dict[str, list[Any]] = {}
    if not no_save and result.plugs:
        with _open_inventory(create=True) as inventory:
            for change in inventory.record(result.plugs):
                changes.setdefault(change.mac, []).append(change)
    for error in result.errors:
        click.echo(f"hs100local: warning: {one_line(error)}", err=True)

    if s.json:
        emit([{**p.as_dict(), "changes": [c.as_dict() for c in changes.get(p.mac, [])]}
              for p in result.plugs])
    else:
        lines = _plug_rows(result.plugs) if result.plugs else ["No plugs found."]
        where = ", ".join(result.probed) or "nothing"
        lines.append(f"{len(result.plugs)} found in {result.elapsed:.2f} s ({where})")
        for p in result.plugs:
            if p.note:
                lines.append(f"note: {p.host} {p.model}: {p.note}")
        news = 0
        for plug_changes in changes.values():
            for change in plug_changes:
                if change.kind == "new":
                    news += 1
                else:
                    lines.append(f"changed: {one_line(change.describe())}")
        if news:
            lines.append(f"{news} new in the inventory (hs100local plugs)")
        emit(None, lines)
    if expect is not None and len(result.plugs) < expect:
        raise PlugTimeoutError(
            f"expected {expect} devices, {len(result.plugs)} answered within {timeout:g} s"
        )


def _when(moment: Any) -> str:
    return moment.astimezone().strftime("%Y-%m-%d %H:%M")


@cli.group(invoke_without_command=True, scope="local")
@json_db_options
@click.pass_context
def plugs(ctx: click.Context) -> None:
    """List the plug inventory (what discover recorded); see also 'plugs changes'."""
    if ctx.invoked_subcommand is not None:
        return
    inventory = _open_inventory(create=False)
    records = [] if inventory is None else inventory.plugs()
    if inventory is not None:
        inventory.close()
    header = ("ALIAS", "MAC", "HOST", "MODEL", "FIRMWARE", "PROTOCOL", "LAST SEEN")
    rows = [
        (one_line(r.alias) or "-", r.mac, _address(r), r.model or "-", _firmware(r),
         _protocol(r), _when(r.last_seen))
        for r in records
    ]
    emit([r.as_dict() for r in records],
         _table(header, rows) if records else ["No plugs recorded yet: run 'hs100local discover'."])


@plugs.command("changes", scope="local")
@json_db_options
@click.option("--plug", "name", metavar="ALIAS|MAC", help="Only this plug.")
@click.option("--kind", "kinds", multiple=True,
              type=click.Choice(["new", "ip", "firmware", "protocol", "alias"]),
              help="Only these kinds (repeatable).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the last N.")
def plugs_changes(name: str | None, kinds: tuple[str, ...], limit: int | None) -> None:
    """Changes seen between discoveries: new plugs, address, firmware, protocol, alias."""
    from hs100local.errors import TargetError

    inventory = _open_inventory(create=False)
    if inventory is None:
        emit([], "No plugs recorded yet: run 'hs100local discover'.")
        return
    with inventory:
        mac = None
        if name is not None:
            found = inventory.lookup(name)
            if found is None:
                raise TargetError(f"no plug {name!r} in the inventory")
            mac = found.record.mac
        changes = inventory.changes(mac=mac, kinds=kinds or None)
    if limit is not None:
        changes = changes[-limit:]
    emit([c.as_dict() for c in changes],
         [f"{_when(c.at)}  {one_line(c.describe())}" for c in changes] or ["No changes."])


@plugs.command("forget", scope="local")
@json_db_options
@click.argument("name", metavar="ALIAS|MAC")
def plugs_forget(name: str) -> None:
    """Remove a plug (and its history) from the inventory."""
    from hs100local.errors import TargetError

    inventory = _open_inventory(create=False)
    found = None if inventory is None else inventory.lookup(name)
    if inventory is None or found is None:
        if inventory is not None:
            inventory.close()
        raise TargetError(f"no plug {name!r} in the inventory")
    if found.child is not None:  # never widen one outlet to the whole strip
        inventory.close()
        strip = found.record.alias or found.record.mac
        raise TargetError(f"{name!r} is outlet {found.child.index} of {strip!r}; forget "
                          f"removes whole plugs: name {strip!r}")
    with inventory:
        inventory.forget(found.record.mac)
    emit({"forgotten": found.record.mac},
         f"Forgot {one_line(found.record.alias) or found.record.model} ({found.record.mac})")


# -------------------------------------------------------------------- DNS


def _addr_port(text: str, default_port: int, what: str) -> tuple[str, int]:
    import ipaddress

    from hs100local.errors import TargetError
    from hs100local.hostport import parse_hostport

    try:
        if what == "--listen" and text.endswith(":0"):
            host, port = text[:-2], 0  # a free port, printed at start (tests, demos)
        else:
            host, port = parse_hostport(text, default_port)
        ipaddress.IPv4Address(host)
    except (TargetError, ValueError):
        raise click.BadParameter(f"{text!r} is not IPv4ADDR[:PORT]", param_hint=what) from None
    return host, port


def _sinkhole(rules: tuple[str, ...], no_defaults: bool, ttl: int) -> Any:
    from hs100local.dns.rules import Sinkhole, default_rules, parse_rule
    from hs100local.errors import TargetError

    try:
        extra = [parse_rule(r) for r in rules]
    except TargetError as exc:
        raise click.BadParameter(str(exc), param_hint="--sinkhole") from None
    return Sinkhole(([] if no_defaults else default_rules()) + extra, ttl=ttl)


_sinkhole_options = (
    click.option("--sinkhole", "rules", multiple=True, metavar="NAME[=MODE[:ADDR]]",
                 help="Add a rule (repeatable). MODE: redirect (default), ntp, null, nodata, "
                      "nxdomain; ADDR: the A answer for redirect/ntp (default: our address)."),
    click.option("--no-default-rules", is_flag=True,
                 help="Start from an empty list instead of the cloud and NTP names."),
    click.option("--ttl", type=click.IntRange(0, 86400), default=60, show_default=True,
                 help="TTL of sinkhole answers."),
)


@cli.group(invoke_without_command=True, scope="local")
@click.option("--listen", "listen", multiple=True, metavar="ADDR:PORT",
              help="Where to answer, UDP and TCP (repeatable; default 127.0.0.1:5353).")
@click.option("--upstream", "upstreams", multiple=True, metavar="ADDR[:PORT]",
              help="Forward other names here (repeatable; default: /etc/resolv.conf).")
@_sinkhole_options[0]
@_sinkhole_options[1]
@_sinkhole_options[2]
@click.option("--allow", "allow", multiple=True, metavar="CIDR",
              help="Clients to answer (repeatable; default: loopback and the networks of the "
                   "listen addresses). Others get REFUSED.")
@click.option("--rate-limit", type=Number(min=0, max=1e9), default=200.0, show_default=True,
              help="Queries per second per client (bursts of twice that); 0 = no limit.")
@click.option("--db", metavar="PATH", default=None,
              help="Event database (default: the inventory's, env HS100LOCAL_DB).")
@click.option("--no-events", is_flag=True, help="Do not record sinkholed queries.")
@click.option("-v", "--verbose", count=True, help="Log (-v) and debug (-vv).")
@click.pass_context
def dns(ctx: click.Context, listen: tuple[str, ...], upstreams: tuple[str, ...],
        rules: tuple[str, ...], no_default_rules: bool, ttl: int, allow: tuple[str, ...],
        rate_limit: float, db: str | None, no_events: bool, verbose: int) -> None:
    """Run the DNS responder: sinkhole the cloud names, forward the rest.

    \b
    Examples:
      hs100local dns --listen 192.168.1.2:53 --upstream 192.168.1.1
      hs100local dns --sinkhole example.com=nxdomain
      hs100local dns check n-devs.tplinkcloud.com
    """
    if ctx.invoked_subcommand is not None:
        return
    import ipaddress

    from hs100local.dns.forward import Forwarder, system_upstreams, without_self
    from hs100local.dns.server import DnsServer, RateLimiter

    _log_level(verbose)
    where = [_addr_port(x, 53, "--listen") for x in listen] or [("127.0.0.1", 5353)]
    ups = [_addr_port(x, 53, "--upstream") for x in upstreams] or system_upstreams()
    ups = without_self(ups, where)
    if not ups:
        raise click.UsageError("no upstream DNS server: give --upstream ADDR[:PORT]")
    try:
        nets = [ipaddress.IPv4Network(a, strict=False) for a in allow] or None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--allow") from None
    sinkhole = _sinkhole(rules, no_default_rules, ttl)

    def make(events: Any) -> DnsServer:
        return DnsServer(sinkhole, Forwarder(ups), where, allow=nets, events=events,
                         limiter=RateLimiter(rate_limit, 2 * rate_limit))

    def banner(server: DnsServer) -> str:
        return (f"DNS on {', '.join(f'{h}:{p}' for h, p in server.bound)} (udp+tcp); "
                f"sinkholing {len(sinkhole.rules)} names; forwarding to "
                f"{', '.join(f'{h}:{p}' for h, p in ups)}; answering "
                f"{', '.join(map(str, server.allow))}; Ctrl-C stops")

    _run_service(make, banner, db=db, no_events=no_events)


def _log_level(verbose: int) -> None:
    import logging

    logging.basicConfig(
        level=logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(name)s: %(message)s",
    )


def _run_service(make: Callable[[Any], Any], banner: Callable[[Any], str], *,
                 db: str | None, no_events: bool) -> None:
    """Start ``make(events)`` (an object with async start/close), print ``banner``, and
    run until SIGTERM/SIGINT; then close it and flush the event store."""
    import asyncio
    import signal

    async def serve() -> None:
        events = None
        if not no_events:
            from hs100local.events import EventStore

            events = EventStore(db)
        server = make(events)
        try:
            await server.start()
        except OSError as exc:
            if events is not None:
                events.close()
            raise click.ClickException(f"cannot listen: {exc.strerror or exc}") from None
        click.echo(banner(server))
        sys.stdout.flush()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)  # stop cleanly: flush the events
        try:
            await stop.wait()
        finally:
            await server.close()
            if events is not None:
                events.close()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass
    except click.ClickException as exc:
        exc.exit_code = 3
        raise


@dns.command("check", scope="local")
@click.argument("name")
@click.option("--type", "qtype", default="A", show_default=True, metavar="TYPE",
              help="Query type (A, AAAA, TXT, HTTPS, MX, ANY, …).")
@click.option("--server", metavar="ADDR:PORT", default=None,
              help="Ask this DNS server instead of evaluating the rules here.")
@_sinkhole_options[0]
@_sinkhole_options[1]
@_sinkhole_options[2]
@click.option("--timeout", type=Number(min=0.1, max=3600), default=3.0, show_default=True,
              metavar="SECONDS", help="With --server: how long to wait for the answer.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def dns_check(name: str, qtype: str, server: str | None, rules: tuple[str, ...],
              no_default_rules: bool, ttl: int, timeout: float, as_json: bool) -> None:
    """Show what NAME gets: the matching sinkhole rule, or a real server's answer."""
    import json

    as_json = as_json or settings().json

    from dnslib import QTYPE, RCODE, DNSRecord

    from hs100local.dns.answers import answers_a, rule_address
    from hs100local.dns.rules import normalize_name
    from hs100local.errors import PlugTimeoutError, ProtocolError, TargetError

    qtype = qtype.upper()
    if qtype not in QTYPE.reverse:
        raise click.BadParameter(f"unknown type {qtype!r}", param_hint="--type")
    try:
        fqdn = normalize_name(name)
    except TargetError as exc:
        raise click.BadParameter(str(exc), param_hint="NAME") from None
    if server is None:
        rule = _sinkhole(rules, no_default_rules, ttl).match(fqdn)
        if rule is None:
            data: dict[str, Any] = {"name": fqdn, "type": qtype, "action": "forward"}
            human = f"{fqdn} {qtype}: not sinkholed, forwarded upstream"
        else:
            if rule.mode == "nxdomain":
                result = "NXDOMAIN"
            elif answers_a(rule, QTYPE.reverse[qtype], 1):
                result = "A " + (rule_address(rule, None) if rule.address or rule.mode == "null"
                                 else "<this server's address>")
            else:
                result = "NOERROR, no answer (SOA)"
            data = {"name": fqdn, "type": qtype, "action": rule.mode, "rule": rule.suffix,
                    "answer": result}
            human = f"{fqdn} {qtype}: sinkholed by {rule.suffix} ({rule.mode}): {result}"
        click.echo(json.dumps(data) if as_json else human)
        return
    import socket

    host, port = _addr_port(server, 53, "--server")
    request = DNSRecord.question(fqdn, qtype)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(timeout)
    try:
        sock.sendto(request.pack(), (host, port))
        while True:
            payload, addr = sock.recvfrom(65535)
            reply = DNSRecord.parse(payload)
            if addr[0] == host and reply.header.id == request.header.id:
                break
    except TimeoutError:
        raise PlugTimeoutError(f"no DNS answer from {host}:{port} within {timeout:g} s") from None
    except OSError as exc:
        raise ProtocolError(f"DNS query to {host}:{port} failed: {exc}") from None
    except Exception as exc:  # dnslib parse errors
        raise ProtocolError(f"bad DNS answer from {host}:{port}: {exc}") from None
    finally:
        sock.close()
    records = [{"name": str(rr.rname), "type": QTYPE.get(rr.rtype), "ttl": rr.ttl,
                "data": str(rr.rdata)} for rr in reply.rr + reply.auth]
    rcode = RCODE.get(reply.header.rcode)
    if as_json:
        click.echo(json.dumps({"name": fqdn, "type": qtype, "rcode": rcode, "records": records}))
        return
    click.echo(f"{fqdn} {qtype}: {rcode}")
    for r in records:
        click.echo(f"  {r['name']} {r['ttl']} {r['type']} {r['data']}")


# -------------------------------------------------------------------- NTP


@cli.command(scope="local")
@click.option("--listen", "listen", multiple=True, metavar="ADDR:PORT",
              help="Where to answer (repeatable; default 127.0.0.1:1123). Plugs ask port "
                   "123 of the address our DNS gives for NTP names.")
@click.option("--stratum", type=click.IntRange(1, 15), default=3, show_default=True,
              help="Stratum to announce while the host clock is synchronised.")
@click.option("--assume-synced", is_flag=True,
              help="Answer as synchronised even if the kernel says the clock is not (no NTP "
                   "daemon on this host, but its clock is known good).")
@click.option("--ref-id", default=None, metavar="ID",
              help="Reference ID: IPv4 address or up to 4 characters (default 127.127.1.1, "
                   "LOCL at stratum 1).")
@click.option("--rate-limit", type=Number(min=0, max=1e9), default=1.0, show_default=True,
              help="Requests per second per client (bursts of 8, or twice the rate); over it "
                   "a RATE kiss-o'-death. 0 = no limit.")
@click.option("--db", metavar="PATH", default=None,
              help="Event database (default: the inventory's, env HS100LOCAL_DB).")
@click.option("--no-events", is_flag=True, help="Do not record requests.")
@click.option("-v", "--verbose", count=True, help="Log (-v) and debug (-vv).")
def ntp(listen: tuple[str, ...], stratum: int, assume_synced: bool, ref_id: str | None,
        rate_limit: float, db: str | None, no_events: bool, verbose: int) -> None:
    """Run the SNTP server plugs get their time from (RFC 4330/5905).

    Leap indicator and stratum follow the kernel's clock state (ntp_adjtime): while
    the host clock is not synchronised it answers LI 3 / stratum 16, which clients
    ignore, unless --assume-synced. Modes 6/7 and short packets are never answered.
    Every answered request is recorded with the client's own clock reading.

    \b
    Examples:
      hs100local ntp --listen 192.168.1.2:123
      hs100local ntp --listen 127.0.0.1:1123 --assume-synced
    """
    from hs100local.ntp.clock import ClockState
    from hs100local.ntp.server import NtpServer
    from hs100local.ratelimit import RateLimiter

    _log_level(verbose)
    where = [_addr_port(x, 123, "--listen") for x in listen] or [("127.0.0.1", 1123)]
    try:
        clock = ClockState(stratum=stratum, assume_synced=assume_synced, ref_id=ref_id)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--ref-id") from None

    def make(events: Any) -> NtpServer:
        return NtpServer(where, clock=clock, events=events,
                         limiter=RateLimiter(rate_limit, max(8.0, 2 * rate_limit)))

    def banner(server: NtpServer) -> str:
        kernel = clock.kernel
        if kernel.synced:
            state = f"host clock synchronised (max error {kernel.max_error * 1000:.0f} ms)"
        elif assume_synced:
            state = "host clock assumed synchronised (--assume-synced)"
        else:
            state = ("host clock NOT synchronised: answering stratum 16, which clients "
                     "ignore (run an NTP daemon, or --assume-synced)")
        return (f"NTP on {', '.join(f'{h}:{p}' for h, p in server.bound)} (udp); stratum "
                f"{clock.current().stratum}; {state}; Ctrl-C stops")

    _run_service(make, banner, db=db, no_events=no_events)


# ------------------------------------------------------------------ serve


@cli.command(scope="local")
@click.option("--config", "config_file", metavar="FILE", default=None,
              help="TOML file whose keys are these flags' names (examples/hs100local.toml); "
                   "flags given here override it.")
@click.option("--dns", "dns_addrs", multiple=True, metavar="ADDR:PORT",
              help="DNS responder address (repeatable; default 127.0.0.1:5353).")
@click.option("--ntp", "ntp_addrs", multiple=True, metavar="ADDR:PORT",
              help="NTP server address (repeatable; default 127.0.0.1:1123).")
@click.option("--cloud", "cloud_addrs", multiple=True, metavar="ADDR:PORT",
              help="Cloud (TLS) listener address (repeatable; default 127.0.0.1:8443 and "
                   ":50443; plugs use 443 and 50443).")
@click.option("--upstream", "upstreams", multiple=True, metavar="ADDR[:PORT]",
              help="Upstream DNS server (repeatable; default: /etc/resolv.conf).")
@click.option("--db", default=None, metavar="PATH",
              help="Inventory and event database (env HS100LOCAL_DB).")
@click.option("--assume-synced", is_flag=True, default=None,
              help="NTP: answer as synchronised even if the kernel says otherwise.")
@click.option("--no-dns", is_flag=True, help="Leave the DNS responder out.")
@click.option("--no-ntp", is_flag=True, help="Leave the NTP server out.")
@click.option("--no-cloud", is_flag=True, help="Leave the cloud listener out.")
@click.option("--cloud-mode", type=click.Choice(["handshake", "log", "reset"]), default=None,
              help="After the ClientHello: try the handshake (default), close, or reset.")
@click.option("--sinkhole", "rules", multiple=True, metavar="NAME[=MODE[:ADDR]]",
              help="An extra sinkhole rule (repeatable).")
@click.option("--time-interval", type=Number(min=0, max=MAX_SECONDS), default=None,
              metavar="SECONDS",
              help="Time keeper pass every SECONDS (default 300; 0 = off).")
@click.option("--discover-interval", type=Number(min=0, max=MAX_SECONDS), default=None,
              metavar="SECONDS", help="Discovery every SECONDS (default 3600; 0 = off).")
@click.option("--user", default=None, help="Drop to this user after binding (when root).")
@click.option("--web", "web_addrs", multiple=True, metavar="ADDR[:PORT]",
              help="Web dashboard address (repeatable; port 8099 by default). Beyond "
                   "loopback it needs a token or user/password in the [web] table.")
@click.option("--no-web", is_flag=True, help="Leave the web dashboard out.")
@click.option("-v", "--verbose", count=True, help="Debug logging.")
def serve(config_file: str | None, dns_addrs: tuple[str, ...], ntp_addrs: tuple[str, ...],
          cloud_addrs: tuple[str, ...], upstreams: tuple[str, ...], db: str | None,
          assume_synced: bool | None, no_dns: bool, no_ntp: bool, no_cloud: bool,
          cloud_mode: str | None, rules: tuple[str, ...], time_interval: float | None,
          discover_interval: float | None, user: str | None, web_addrs: tuple[str, ...],
          no_web: bool, verbose: int) -> None:
    """Run the cloud-isolation companion: DNS, NTP, cloud listener, time keeper, discovery.

    Without --config it is a demo on unprivileged loopback ports. SIGHUP reloads the
    config file (sinkhole rules, zones, time threshold); SIGTERM stops after
    flushing the events. Logs one line per notable event to stderr.

    \b
    Examples:
      hs100local serve --config /etc/hs100local/hs100local.toml
      hs100local serve --dns 192.168.1.2:53 --ntp 192.168.1.2:123 \\
          --cloud 192.168.1.2:443 --cloud 192.168.1.2:50443 --upstream 192.168.1.1
    """
    import asyncio
    import logging

    from hs100local import config as cfg
    from hs100local.serve import run

    flags: dict[str, Any] = {}
    for key, values, off in (("dns", dns_addrs, no_dns), ("ntp", ntp_addrs, no_ntp),
                             ("cloud", cloud_addrs, no_cloud), ("web", web_addrs, no_web)):
        if off and values:
            raise click.UsageError(f"--{key} and --no-{key} contradict each other")
        if off or values:
            flags[key] = False if off else list(values)
    if "web" in flags:
        flags["web"] = {"listen": flags["web"]}
    for key, value in (("upstream", list(upstreams) or None), ("db", db),
                       ("assume-synced", assume_synced), ("cloud-mode", cloud_mode),
                       ("sinkhole", list(rules) or None), ("time-interval", time_interval),
                       ("discover-interval", discover_interval), ("user", user)):
        if value is not None:
            flags[key] = value

    def overrides(base: cfg.ServeConfig) -> cfg.ServeConfig:
        return cfg.from_mapping(flags, "command line", base=base)

    def config_error(exc: Exception) -> click.ClickException:
        error = click.ClickException(str(exc))  # one line, exit 2 (usage)
        error.exit_code = 2
        return error

    try:
        base = cfg.load(config_file) if config_file else cfg.ServeConfig()
        config = overrides(base)
    except cfg.ConfigError as exc:
        raise config_error(exc) from None
    level = "debug" if verbose else config.log_level
    logging.basicConfig(level=getattr(logging, level.upper()),
                        format="%(asctime)s %(name)s: %(message)s")

    def ready(description: str) -> None:
        click.echo(f"serving: {description}; Ctrl-C stops")
        sys.stdout.flush()

    try:
        asyncio.run(run(config, config_path=config_file, overrides=overrides, ready=ready))
    except KeyboardInterrupt:
        pass
    except cfg.ConfigError as exc:
        raise config_error(exc) from None
    except OSError as exc:
        error = click.ClickException(f"cannot listen: {exc.strerror or exc}")
        error.exit_code = 3
        raise error from None


# --------------------------------------------------------------- emulator


async def _cloud_across_reboots(server: Any, client: Any) -> None:
    """Run the plug's cloud behaviour; a reboot (``system.reboot``) ends it with the
    plug's connections and starts it afresh when the plug is back, as on a real plug."""
    import asyncio
    import contextlib

    while True:
        running = asyncio.create_task(client.run())
        down = asyncio.create_task(server.went_down.wait())
        try:
            await asyncio.wait({running, down}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (running, down):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await server.came_up.wait()


def _cloud_settings(cloud: bool, dns_server: str | None, cloud_ca: str | None,
                    cloud_port: int, retry: float, keepalive: float,
                    ntp_names: tuple[str, ...], ntp_port: int, protocol: str) -> Any:
    """``emulate --cloud``'s settings, or None without --cloud (then the other cloud
    options are refused rather than silently ignored)."""
    if not cloud:
        if dns_server or cloud_ca or ntp_names:
            raise click.UsageError("--dns, --cloud-ca and --ntp-name need --cloud")
        return None
    if protocol != "xor":
        raise click.UsageError("--cloud emulates legacy (xor) firmware; not with --protocol klap")
    if not dns_server:
        raise click.UsageError("--cloud needs --dns ADDR[:PORT] (the plug's DNS server)")
    from pathlib import Path

    from hs100local.emulator.cloud import DEFAULT_NTP_NAMES, CloudSettings
    from hs100local.errors import TargetError
    from hs100local.hostport import parse_hostport

    try:
        host, port = parse_hostport(dns_server, 53)
        return CloudSettings(dns=(host, port), cloud_port=cloud_port, retry=retry,
                             keepalive=keepalive, ca_file=Path(cloud_ca) if cloud_ca else None,
                             ntp_names=ntp_names or DEFAULT_NTP_NAMES, ntp_port=ntp_port)
    except (ValueError, TargetError) as exc:
        raise click.BadParameter(str(exc), param_hint="--dns") from None


def _model_names() -> list[str]:
    # Kept literal so --help need not import the emulator.
    return ["hs100", "hs105", "hs110", "hs110v2", "hs200", "hs300", "kp303"]


@cli.command(scope="local")
@click.option("--model", type=click.Choice(_model_names()), default="hs110", show_default=True,
              help="Which plug to be: its sysinfo, outlets and meter.")
@click.option("--bind", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0 for all interfaces).")
@click.option("--port", type=click.IntRange(0, 65535), default=9999, show_default=True,
              help="TCP and UDP port (0 picks a free one).")
@click.option("--alias", default=None, help="Initial alias.")
@click.option("--mac", default=None, help="MAC address (default: derived from model and port).")
@click.option("--load", "load_w", type=Number(0, 3680), default=60.0, show_default=True,
              help="Watts the emulated appliance draws when on (energy meter models).")
@click.option("--tz-index", type=click.IntRange(0, 109), default=6, show_default=True,
              help="Initial time-zone index (6 = US Pacific, the factory default).")
@click.option("--udp/--no-udp", default=True, show_default=True, help="Also answer on UDP.")
@click.option("--protocol", type=click.Choice(["xor", "klap"]), default="xor",
              show_default=True,
              help="klap: a plug whose firmware closed port 9999; it only answers the "
                   "discovery probe on UDP 20002/20004 (--port is ignored).")
@click.option("--sw-ver", default=None, metavar="VERSION",
              help="Firmware version to report (default: the model's).")
@click.option("--clock-start", type=click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]),
              default=None, metavar="YYYY-MM-DD[THH:MM:SS]",
              help="Start the plug's clock here (local time in its zone) instead of at "
                   "this host's time; before 2001 it is unsynchronised like a plug after a "
                   "power cut (rules answer -11 until the clock is set).")
@click.option("--cloud", is_flag=True,
              help="Behave like a plug on the internet: keep time over NTP and keep trying "
                   "the cloud over TLS (starts with its clock at 2000-01-01, as after a "
                   "power cut, unless --clock-start).")
@click.option("--dns", "dns_server", metavar="ADDR[:PORT]",
              help="--cloud: the DNS server the plug got from DHCP (port 53 by default).")
@click.option("--cloud-ca", type=click.Path(exists=True, dir_okay=False), default=None,
              help="--cloud: PEM of the only CA the plug trusts (default: a throwaway CA, "
                   "so no server is trusted, like a real plug against anything but "
                   "TP-Link).")
@click.option("--cloud-port", type=click.IntRange(1, 65535), default=443, show_default=True,
              help="--cloud: the cloud's TLS port (50443 on older firmware).")
@click.option("--cloud-retry", type=Number(min=0.1, max=MAX_SECONDS), default=60.0,
              show_default=True, metavar="SECONDS",
              help="--cloud: wait between cloud attempts, after a lost connection, and "
                   "after the whole NTP list failed.")
@click.option("--cloud-keepalive", type=Number(min=0.1, max=MAX_SECONDS), default=236.0,
              show_default=True, metavar="SECONDS",
              help="--cloud: keepalive interval while connected to a cloud it trusts.")
@click.option("--ntp-name", "ntp_names", multiple=True, metavar="NAME",
              help="--cloud: replace the rotating NTP name list (repeatable).")
@click.option("--ntp-port", type=click.IntRange(1, 65535), default=123, show_default=True,
              help="--cloud: the NTP port.")
@click.option("-v", "--verbose", count=True, help="Log requests (-v) and protocol errors.")
def emulate(model: str, bind: str, port: int, alias: str | None, mac: str | None,
            load_w: float, tz_index: int, udp: bool, protocol: str, sw_ver: str | None,
            clock_start: Any, cloud: bool, dns_server: str | None, cloud_ca: str | None,
            cloud_port: int, cloud_retry: float, cloud_keepalive: float,
            ntp_names: tuple[str, ...], ntp_port: int, verbose: int) -> None:
    """Run an emulated plug (a test double and a demo without hardware).

    With --cloud it also does what a real plug does on its own: resolve a time
    server and set its clock by SNTP, and connect to the cloud by TLS with a
    plug-like ClientHello, trusting only its pinned CA (--cloud-ca), retrying,
    and registering with keepalives when it reaches a server it trusts.
    """
    import asyncio
    import logging

    from hs100local.emulator import MODELS, EmulatedPlug
    from hs100local.emulator.klap import KlapDevice, KlapServer
    from hs100local.emulator.server import EmulatorServer
    from hs100local.results import normalize_mac

    logging.basicConfig(
        level=logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(name)s: %(message)s",
    )
    if mac is None:
        import hashlib

        digest = hashlib.sha1(f"{model}/{bind}/{port}".encode()).hexdigest().upper()
        mac = f"{MODELS[model].mac_prefix}:{digest[0:2]}:{digest[2:4]}:{digest[4:6]}"
    elif normalize_mac(mac) is None:
        raise click.BadParameter(f"{mac!r} is not a MAC address", param_hint="--mac")
    cloud_settings = _cloud_settings(cloud, dns_server, cloud_ca, cloud_port, cloud_retry,
                                     cloud_keepalive, ntp_names, ntp_port, protocol)
    if cloud and clock_start is None:
        from hs100local.emulator.plug import POWER_ON_CLOCK

        clock_start = POWER_ON_CLOCK
    spec = MODELS[model]
    if sw_ver is not None:
        from dataclasses import replace

        spec = replace(spec, sw_ver=sw_ver)
    server: EmulatorServer | KlapServer
    try:
        if protocol == "klap":
            device = KlapDevice(spec, normalize_mac(mac) or mac)
            server = KlapServer(device, bind)
            what = f"{device.spec.model} hw {device.hw_ver} KLAP firmware ({device.mac})"
        else:
            plug = EmulatedPlug(spec, alias=alias, mac=mac, load_w=load_w,
                                tz_index=tz_index, clock_start=clock_start)
            server = EmulatorServer(plug, bind, port, udp=udp)
            what = f"{plug.spec.model} hw {plug.spec.hw_ver} {plug.alias!r} ({plug.mac})"
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None

    async def serve() -> None:
        try:
            await server.start()
        except OSError as exc:
            where = f"{bind}:{port}" if protocol == "xor" else f"udp {bind}:20002/20004"
            raise click.ClickException(
                f"cannot listen on {where}: {exc.strerror or exc}"
            ) from None
        if isinstance(server, KlapServer):
            on = f"{bind}:{'/'.join(map(str, server.ports))} (udp, TDP only)"
        else:
            on = f"{bind}:{server.port} ({'tcp+udp' if udp else 'tcp'})"
        click.echo(f"Emulating {what} on {on}; Ctrl-C stops", nl=True)
        sys.stdout.flush()
        behaviour = None
        if cloud_settings is not None:
            from hs100local.emulator.cloud import PlugCloud

            logging.getLogger("hs100local.emulator.cloud").setLevel(logging.INFO)
            try:
                client = PlugCloud(server.plug, cloud_settings, source=bind)
            except (ValueError, OSError) as exc:  # e.g. --cloud-ca is no CA certificate
                raise click.ClickException(f"--cloud-ca: {exc}") from None
            behaviour = asyncio.create_task(_cloud_across_reboots(server, client))
        try:
            await asyncio.Event().wait()
        finally:
            if behaviour is not None:
                behaviour.cancel()
            await server.close()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass
    except click.ClickException as exc:
        exc.exit_code = 3
        raise


def run_in_process(args: list[str]) -> int:
    """Run one hs100local command in this process (output to our stdout/stderr) and
    return its exit code: what ``demo`` uses to show real commands and their output."""
    try:
        cli.main(list(args), prog_name="hs100local", standalone_mode=True)
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0


@cli.command(scope="local")
@click.option("--db", "demo_db", metavar="PATH", default=None,
              help="Keep the demo's database here (default: a temporary folder, removed "
                   "at the end), to run 'plugs', 'events' and 'report' on it afterwards.")
def demo(demo_db: str | None) -> None:
    """Show the companion on loopback: serve, three emulated plugs that get their time
    from it and try their cloud, a switch, and what it recorded (no root, nothing sent
    beyond this machine, a few seconds; everything stops at the end)."""
    from hs100local.demo import run_demo

    code = run_demo(db=demo_db or settings().db, echo=click.echo, command=run_in_process)
    if code:
        sys.exit(code)


def main() -> None:
    """Console-script entry point."""
    try:
        cli.main(prog_name="hs100local")
    except KeyboardInterrupt:
        click.echo("hs100local: interrupted", err=True)
        sys.exit(130)


# Commands in their own modules, registered on `cli` when imported: reading the event
# store (events, watch, report), the firewall rules, the isolation audit.
from hs100local import cli_audit, cli_events, cli_firewall  # noqa: E402,F401
