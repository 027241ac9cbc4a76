"""The dashboard application: routes, the periodic check of the plugs, switching.

Everything the page shows comes from what the CLI uses: the inventory (plugs,
firmware changes), the event store (timeline, recent events, ``report``), the
isolation audit (:func:`hs100local.audit_run.run_audit`: state, clock offset,
cloud status, verdict) and the device model (:class:`hs100local.device.Plug`)
for switching. Asking every plug takes up to a timeout, so the audit runs in the
background every ``refresh`` seconds (and on "Check now") and requests read its
latest result; a switch updates that plug's row from the plug's own answer.

Routes (all but ``/login`` and ``/static/`` need authentication, see
:mod:`hs100local.web.auth`; every POST needs the CSRF token):

``GET /``, ``GET /chart.svg?range=``, ``GET /api/plugs``, ``GET /api/events``,
``GET /api/report``, ``GET /api/timeline``, ``GET /metrics``, ``POST /api/check``,
``POST /api/plugs/<MAC>/switch`` (``on`` = true/false, optional ``outlet`` index),
``GET``/``POST /login``, ``POST /logout``.

Bad requests get a 4xx with a one-line reason (JSON under ``/api/``), never a
traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

from hs100local.config import ServeConfig
from hs100local.errors import DeviceError, Hs100Error, one_line
from hs100local.web import pages
from hs100local.web.auth import Access, parse_form
from hs100local.web.http import Request, Response

log = logging.getLogger("hs100local.web")

#: the window of the audit's recorded cloud attempts and of /api/report by default
WINDOW_S = 86400.0
#: firmware and protocol changes this recent are shown as warnings
WARN_DAYS = 30
RECENT_EVENTS = 50
MAX_EVENTS = 1000
STATIC = {"dashboard.css": "text/css; charset=utf-8",
          "dashboard.js": "text/javascript; charset=utf-8", "favicon.svg": "image/svg+xml"}
PLUG_TIMEOUT = 3.0


class BadRequest(Exception):
    """A request that cannot be served as asked: status and one line why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Snapshot:
    """The latest check of the plugs."""

    audit: Any  # hs100local.audit.Audit
    at: float


Auditor = Callable[[ServeConfig, list[Any]], Awaitable[Any]]


class Dashboard:
    """The web app of one ``serve``: ``handle`` answers requests, ``run`` keeps the
    check of the plugs fresh. ``tally`` is the daemon's per-(kind, plug) event
    counter (for /metrics); ``http_stats`` the web server's counters."""

    def __init__(self, config: ServeConfig, *, db: Path, tally: Mapping[Any, int] | None = None,
                 access: Access | None = None, clock: Callable[[], float] = time.time,
                 timeout: float = PLUG_TIMEOUT) -> None:
        self.config = config
        self.db = Path(db)
        self.tally = tally if tally is not None else {}
        self.access = access or Access(config.web)
        self.clock = clock
        self.timeout = timeout
        self.http_stats: Any = None
        self.snapshot: Snapshot | None = None
        self._wanted = asyncio.Event()
        self._checking = asyncio.Lock()
        self._cached: list[Any] | None = None
        self._routes: dict[tuple[str, str], Callable[[Request, Any], Awaitable[Response]]] = {
            ("GET", "/"): self._page,
            ("GET", "/chart.svg"): self._chart,
            ("GET", "/api/plugs"): self._api_plugs,
            ("GET", "/api/events"): self._api_events,
            ("GET", "/api/report"): self._api_report,
            ("GET", "/api/timeline"): self._api_timeline,
            ("GET", "/metrics"): self._metrics,
            ("POST", "/api/check"): self._api_check,
            ("POST", "/logout"): self._logout,
        }

    # ------------------------------------------------------------ checking

    async def check(self) -> Snapshot:
        """Audit every inventory plug now (the page's "Check now", and each refresh)."""
        from hs100local.audit_run import run_audit

        # one check at a time: "Check now" pressed in a hurry must not flood the plugs
        async with self._checking:
            records = self._cached = await asyncio.to_thread(self._records)
            now = self.clock()
            audit = await run_audit(self.config, records, db=self.db, since=now - WINDOW_S,
                                    timeout=self.timeout)
            self.snapshot = Snapshot(audit, self.clock())
            return self.snapshot

    def wake(self) -> None:
        """Check again now (discovery found a change)."""
        self._cached = None
        self._wanted.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Check at start, then every ``refresh`` seconds or when asked."""
        while not stop.is_set():
            try:
                await self.check()
            except Exception:  # a failed pass must not end the dashboard
                log.exception("checking the plugs failed")
            self._wanted.clear()
            waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wanted.wait())]
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait(waits, timeout=self.config.web.refresh,
                                   return_when=asyncio.FIRST_COMPLETED)
            for waiter in waits:
                waiter.cancel()

    async def _known(self) -> list[Any]:
        """The inventory as of the latest check (or discovery's wake-up): opening the
        inventory takes its write lock for the schema check, so requests do not."""
        if self._cached is None:
            self._cached = await asyncio.to_thread(self._records)
        return self._cached

    def _records(self) -> list[Any]:
        from hs100local.inventory import Inventory

        if not self.db.exists():
            return []
        with Inventory(self.db) as inventory:
            return inventory.plugs()

    def _changes(self, since: float) -> list[Any]:
        from hs100local.inventory import Inventory

        if not self.db.exists():
            return []
        with Inventory(self.db) as inventory:
            return inventory.changes(kinds=["firmware", "protocol"],
                                     since=datetime.fromtimestamp(since, timezone.utc))

    def _events(self, **selection: Any) -> list[Any]:
        from hs100local.errors import StoreError
        from hs100local.events import EventReader

        try:
            with EventReader(self.db) as reader:
                return reader.events(**selection)
        except StoreError:
            if not self.db.exists():
                return []
            raise

    # ------------------------------------------------------------- routing

    async def handle(self, request: Request) -> Response:
        """One request in, one response out; errors become 4xx with a reason."""
        try:
            response = await self._dispatch(request)
        except BadRequest as exc:
            response = self._error(request, exc.status, str(exc))
        except Hs100Error as exc:
            response = self._error(request, 503, f"unavailable: {one_line(str(exc))}")
        response.headers.append(("Content-Security-Policy", pages.CSP))
        return response

    @staticmethod
    def _error(request: Request, status: int, message: str) -> Response:
        if request.path.startswith("/api/"):
            return Response.json({"error": message}, status=status)
        return Response.text(message + "\n", status=status)

    async def _dispatch(self, request: Request) -> Response:
        if not self.access.host_allowed(request):
            raise BadRequest(421, "without a token this dashboard answers to loopback names "
                                  "only and not through a proxy (use http://127.0.0.1:PORT/, "
                                  "or set a token in [web])")
        method = "GET" if request.method == "HEAD" else request.method
        path = request.path
        if path.startswith("/static/"):
            return self._static(method, path[len("/static/"):])
        if path == "/login":
            return await self._login(request, method)
        who = self.access.identify(request)
        if (who is None or who.how == "basic") and self.access.locked_out(request):
            return self._error(request, 429, "too many wrong credentials: wait a minute")
        if who is None:
            if request.header("authorization") is not None:
                self.access.failed(request)
            return self._challenge(request)
        form: dict[str, list[str]] | None = None
        if method == "POST":
            form = parse_form(request)
            if not self.access.csrf_ok(request, who, form):
                raise BadRequest(403, "missing or wrong CSRF token (reload the page)")
        route = self._routes.get((method, path))
        if route is not None:
            return await route(request, form)
        if path.startswith("/api/plugs/") and path.endswith("/switch"):
            if method != "POST":
                return self._not_allowed("POST")
            return await self._switch(request, path[len("/api/plugs/"):-len("/switch")], form)
        allowed = sorted({m for m, p in self._routes if p == path})
        if allowed:
            return self._not_allowed(", ".join(["HEAD", *allowed] if "GET" in allowed
                                               else allowed))
        raise BadRequest(404, f"no such page: {path}")

    @staticmethod
    def _not_allowed(allow: str) -> Response:
        response = Response.text("method not allowed\n", status=405)
        response.headers.append(("Allow", allow))
        return response

    def _challenge(self, request: Request) -> Response:
        if self.access.mode == "basic":
            response = Response.text("authentication required\n", status=401)
            response.headers.append(("WWW-Authenticate",
                                     'Basic realm="hs100local", charset="UTF-8"'))
            return response
        if request.method in ("GET", "HEAD") and not request.path.startswith("/api/") \
                and request.path != "/metrics":
            return Response.redirect("/login")
        response = self._error(request, 401, "authentication required: send "
                                             "'Authorization: Bearer TOKEN' or log in")
        response.headers.append(("WWW-Authenticate", 'Bearer realm="hs100local"'))
        return response

    # -------------------------------------------------------------- static

    @staticmethod
    def _static(method: str, name: str) -> Response:
        if method != "GET":
            return Dashboard._not_allowed("GET, HEAD")
        kind = STATIC.get(name)
        if kind is None:
            raise BadRequest(404, "no such file")
        body = _static_bytes(name)
        response = Response(200, body, kind)
        response.headers.append(("Cache-Control", "no-cache"))
        return response

    # --------------------------------------------------------------- login

    async def _login(self, request: Request, method: str) -> Response:
        if self.access.mode != "token":
            return Response.redirect("/")
        if method == "GET":
            return Response.html(pages.login())
        if method != "POST":
            return self._not_allowed("GET, HEAD, POST")
        if not self.access.same_site(request):
            raise BadRequest(403, "login from another site refused")
        if self.access.locked_out(request):
            return Response.html(pages.login("Too many failed logins: wait a minute."), 429)
        token = (parse_form(request).get("token") or [None])[0]
        if not self.access.login(request, token):
            log.warning("failed dashboard login from %s", request.client[0])
            return Response.html(pages.login("Wrong token."), 403)
        response = Response.redirect("/")
        response.headers.append(("Set-Cookie", self.access.session_cookie()))
        return response

    async def _logout(self, request: Request, form: Any) -> Response:
        response = Response.redirect("/login" if self.access.mode == "token" else "/")
        response.headers.append(("Set-Cookie", self.access.logout_cookie()))
        return response

    # --------------------------------------------------------------- pages

    def _range(self, request: Request) -> str:
        from hs100local.web.chart import parse_range

        try:
            return parse_range(request.first("range"))
        except ValueError as exc:
            raise BadRequest(400, str(exc)) from None

    async def _timeline(self, range_key: str) -> Any:
        from hs100local.attribution import unique_hosts
        from hs100local.web.chart import RANGES, build_timeline

        now = self.clock()
        span = RANGES[range_key][0]
        records = await self._known()
        events = await asyncio.to_thread(self._events, since=now - span - RANGES[range_key][1],
                                         kind=["tls", "dns", "ntp"])
        return build_timeline(events, end=now, range_key=range_key,
                              labels={r.mac: r.alias or r.mac for r in records},
                              host_to_plug=unique_hosts(records))

    async def _chart_svg(self, range_key: str) -> str:
        from hs100local.web.chart import render_svg

        offset = datetime.now().astimezone().utcoffset()
        return render_svg(await self._timeline(range_key),
                          tz_offset_s=offset.total_seconds() if offset else 0.0)

    async def _chart(self, request: Request, form: Any) -> Response:
        response = Response(200, (await self._chart_svg(self._range(request))).encode(),
                            "image/svg+xml; charset=utf-8")
        return response

    async def _page(self, request: Request, form: Any) -> Response:
        from hs100local.eventview import local_time, summary
        from hs100local.web.chart import RANGES

        range_key = self._range(request)
        records = await self._known()
        snapshot = self.snapshot
        rows = {r.mac: r for r in snapshot.audit.plugs} if snapshot else {}
        aliases = {r.mac: r.alias for r in records}
        recent = await asyncio.to_thread(self._events, limit=RECENT_EVENTS)
        changes = await asyncio.to_thread(self._changes, self.clock() - WARN_DAYS * 86400)
        data = pages.PageData(
            plugs=[pages.PlugView(r.mac, r.alias, r.host, r.model,
                                  f"{r.sw_ver} (hw {r.hw_ver})", r.protocol, rows.get(r.mac))
                   for r in records],
            checked_at=local_time(snapshot.at) if snapshot else None,
            checking=snapshot is None,
            dns=snapshot.audit.dns.detail if snapshot else "-",
            firewall=snapshot.audit.firewall if snapshot else "-",
            warnings=[c.as_dict() | {"at": local_time(c.at.timestamp())} for c in changes],
            events=[(local_time(ev.at), ev.kind,
                     (ev.client or "-") + (f" ({aliases[ev.plug]})" if ev.plug in aliases
                                           else ""),
                     summary(ev)) for ev in reversed(recent)],
            chart=await self._chart_svg(range_key),
            range_key=range_key, ranges=list(RANGES),
            csrf=self.access.csrf_token,
            logout=self.access.mode == "token")
        return Response.html(pages.dashboard(data))

    # ----------------------------------------------------------------- API

    def _plug_json(self, record: Any, row: Any) -> dict[str, Any]:
        data: dict[str, Any] = {
            "mac": record.mac, "alias": record.alias, "host": record.host,
            "port": record.port, "model": record.model, "sw_ver": record.sw_ver,
            "hw_ver": record.hw_ver, "protocol": record.protocol,
            "controllable": record.protocol == "xor",
            "last_seen": record.as_dict()["last_seen"],
            "checked": row is not None}
        if row is not None:
            data.update({
                "reachable": row.local, "error": row.local_error, "on": row.relay_on,
                "outlets": row.outlets, "clock_offset_s": (
                    None if row.clock_offset_s is None else round(row.clock_offset_s, 1)),
                "cloud": row.cloud, "cloud_attempts": row.attempts,
                "firewall": row.firewall, "verdict": row.verdict, "reason": row.reason,
                "notes": row.notes})
        return data

    async def _plugs_payload(self) -> dict[str, Any]:
        from hs100local.eventview import iso

        records = await self._known()
        snapshot = self.snapshot
        rows = {r.mac: r for r in snapshot.audit.plugs} if snapshot else {}
        return {
            "checked_at": iso(snapshot.at) if snapshot else None,
            "dns": snapshot.audit.dns.as_dict() if snapshot else None,
            "firewall": snapshot.audit.firewall if snapshot else None,
            "plugs": [self._plug_json(r, rows.get(r.mac)) for r in records]}

    async def _api_plugs(self, request: Request, form: Any) -> Response:
        return Response.json(await self._plugs_payload())

    async def _api_check(self, request: Request, form: Any) -> Response:
        await self.check()
        if _wants_html(request):
            return Response.redirect("/")
        return Response.json(await self._plugs_payload())

    def _since(self, request: Request, default: str = "24h") -> float:
        from hs100local.eventview import parse_since

        now = self.clock()
        try:
            start = parse_since(request.first("since") or default, now)
        except (ValueError, OverflowError, OSError, Hs100Error) as exc:
            raise BadRequest(400, f"since: {one_line(str(exc))}") from None
        if not 0 <= start <= now + 86400:  # also NaN: datetime would fail on it later
            raise BadRequest(400, "since: want a time between 1970 and tomorrow")
        return start

    async def _api_events(self, request: Request, form: Any) -> Response:
        from hs100local.eventview import event_json

        selection: dict[str, Any] = {"since": self._since(request)}
        kinds = [k for v in request.query.get("kind", []) for k in v.split(",") if k]
        if kinds:
            selection["kind"] = kinds
        for name, low, high in (("limit", 1, MAX_EVENTS), ("after_id", 0, 2**62)):
            text = request.first(name)
            if text is None:
                continue
            try:
                value = int(text)
            except ValueError:
                raise BadRequest(400, f"{name}: want a whole number, got {text!r}") from None
            if not low <= value <= high:
                raise BadRequest(400, f"{name}: {value} is out of range ({low} to {high})")
            selection[name] = value
        selection.setdefault("limit", 100)
        records = await self._known()
        plug = request.first("plug")
        if plug is not None:
            if not plug:
                raise BadRequest(400, "plug: want an alias or a MAC")
            from hs100local.attribution import unique_hosts

            record = _find(records, plug)
            selection["plug"] = record.mac
            selection["plug_addresses"] = [h for h, m in unique_hosts(records).items()
                                           if m == record.mac]
        aliases = {r.mac: r.alias for r in records}
        found = await asyncio.to_thread(self._events, **selection)
        return Response.json({"events": [event_json(ev, aliases.get(ev.plug or ""))
                                         for ev in found]})

    async def _api_report(self, request: Request, form: Any) -> Response:
        from hs100local.report import build_report

        since, until = self._since(request), self.clock()
        records = await self._known()
        found = await asyncio.to_thread(self._events, since=since)
        changes = await asyncio.to_thread(self._changes, since)
        return Response.json(build_report(found, records, changes, since=since,
                                          until=until).as_dict())

    async def _api_timeline(self, request: Request, form: Any) -> Response:
        return Response.json((await self._timeline(self._range(request))).as_dict())

    async def _metrics(self, request: Request, form: Any) -> Response:
        from hs100local.web.metrics import render

        records = await self._known()
        snapshot = self.snapshot
        text = render(self.tally, {r.mac: r.alias for r in records},
                      snapshot.audit.plugs if snapshot else None,
                      checked_at=snapshot.at if snapshot else None, http=self.http_stats)
        return Response(200, text.encode(), "text/plain; version=0.0.4; charset=utf-8")

    # ------------------------------------------------------------ switching

    async def _switch(self, request: Request, mac_text: str, form: Any) -> Response:
        """Switch a plug (or one outlet) through the device model, after checking that
        the device at the inventory's address is still that plug."""
        from hs100local.device import Plug

        args = _switch_args(request, form)
        records = await asyncio.to_thread(self._records)
        record = _find(records, mac_text, by_alias=False)
        if record.protocol != "xor":
            raise BadRequest(409, f"{record.alias}: firmware speaks {record.protocol}; "
                                  "it cannot be switched locally")
        on, outlet = args
        try:
            async with Plug(record.host, record.port, timeout=self.timeout,
                            retries=1) as plug:
                info = await plug.sysinfo()
                if info.mac.upper() != record.mac.upper():
                    raise BadRequest(409, f"another device ({info.mac}) answers at "
                                          f"{record.host}; the plug moved (discovery finds it)")
                target = plug if outlet is None else plug.outlet(_outlet_id(info, outlet))
                await (target.turn_on() if on else target.turn_off())
                after = await plug.sysinfo()
        except DeviceError as exc:
            raise BadRequest(502, f"{record.alias} refused: {one_line(str(exc))}") from None
        except Hs100Error as exc:
            raise BadRequest(504, f"{record.alias} did not answer: {one_line(str(exc))}") \
                from None
        outlets = [{"index": o.index, "id": o.id, "alias": o.alias, "on": o.is_on}
                   for o in after.children]
        self._update_row(record.mac, after.relay_on, outlets)
        log.info("dashboard: %s (%s) switched %s%s from %s", one_line(record.alias), record.mac,
                 "on" if on else "off", f" outlet {outlet}" if outlet else "",
                 request.client[0])
        if _wants_html(request):
            return Response.redirect("/")
        return Response.json({"mac": record.mac, "alias": record.alias, "on": after.relay_on,
                              "outlets": outlets})

    def _update_row(self, mac: str, relay_on: bool | None, outlets: list[dict[str, Any]]) -> None:
        if self.snapshot is None:
            return
        for row in self.snapshot.audit.plugs:
            if row.mac == mac:
                row.relay_on, row.outlets, row.local = relay_on, outlets, True


@functools.lru_cache(maxsize=len(STATIC))
def _static_bytes(name: str) -> bytes:
    return resources.files("hs100local.web").joinpath("static", name).read_bytes()


def _wants_html(request: Request) -> bool:
    """A form posted by a browser without the script: answer with a redirect."""
    kind = (request.header("content-type", "") or "").split(";")[0].strip().lower()
    return kind == "application/x-www-form-urlencoded" and "x-csrf-token" not in request.headers


def _flag(text: Any, name: str) -> bool:
    if isinstance(text, bool):
        return text
    value = str(text).strip().lower()
    if value in ("1", "true", "on", "yes"):
        return True
    if value in ("0", "false", "off", "no"):
        return False
    raise BadRequest(400, f"{name}: want true or false, got {one_line(str(text))!r}")


def _switch_args(request: Request, form: dict[str, list[str]] | None) -> tuple[bool, int | None]:
    """(on, outlet index) from a JSON body or a form."""
    kind = (request.header("content-type", "") or "").split(";")[0].strip().lower()
    if kind == "application/json":
        try:
            body = json.loads(request.body or b"null", parse_constant=_no_constant)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise BadRequest(400, "the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise BadRequest(400, 'want a JSON object like {"on": true}')
        raw_on, raw_outlet = body.get("on"), body.get("outlet")
    else:
        values = form or {}
        raw_on = (values.get("on") or [None])[0]
        raw_outlet = (values.get("outlet") or [None])[0]
    if raw_on is None:
        raise BadRequest(400, "'on' is missing (true or false)")
    outlet = None
    if raw_outlet not in (None, ""):
        text = str(raw_outlet) if isinstance(raw_outlet, int | str) and \
            not isinstance(raw_outlet, bool) else ""
        if not (text.isascii() and text.isdigit() and len(text) <= 3 and int(text) >= 1):
            raise BadRequest(400, f"outlet: want an index 1-n, got "
                                  f"{one_line(repr(raw_outlet))[:40]}")
        outlet = int(text)
    return _flag(raw_on, "on"), outlet


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is no JSON value")


def _outlet_id(info: Any, index: int) -> str:
    for child in info.children:
        if child.index == index:
            return str(child.id)
    raise BadRequest(404, f"{info.alias} has no outlet {index}")


def _find(records: list[Any], name: str, *, by_alias: bool = True) -> Any:
    from hs100local.results import normalize_mac

    mac = normalize_mac(name)
    for record in records:
        if (mac is not None and record.mac == mac) or (by_alias and record.alias == name):
            return record
    raise BadRequest(404, f"no plug {name!r} in the inventory")
