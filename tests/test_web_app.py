"""The dashboard's HTTP API and pages, served by our HttpServer on loopback, asked with
http.client; plugs are emulators on their own loopback addresses, recorded in the
inventory; /metrics is read by prometheus_client's own parser."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from http.client import HTTPConnection, HTTPResponse
from pathlib import Path
from typing import Any

import pytest
from loopback_plugs import LoopbackPlugs
from prometheus_client.parser import text_string_to_metric_families
from servicekit import LoopThread

from hs100local import audit_run
from hs100local import config as cfg
from hs100local.events import EventStore
from hs100local.inventory import Inventory
from hs100local.results import DiscoveredPlug
from hs100local.web.app import Dashboard
from hs100local.web.server import HttpServer

View = audit_run.FirewallView
TOKEN = "t0ken-for-the-tests-0123456789"
HOSTILE = '<script>alert("x")</script>&'


class Site:
    """A dashboard on 127.0.0.1:<port> with its own loop thread."""

    def __init__(self, db: Path, web: cfg.WebConfig, tally: Counter[Any] | None = None) -> None:
        config = cfg.ServeConfig(dns=(), ntp=(), cloud=(), db=str(db), web=web)
        self.app = Dashboard(config, db=db, tally=tally, timeout=1.0)
        self.server = HttpServer([("127.0.0.1", 0)], self.app.handle)
        self.app.http_stats = self.server.stats
        self.thread = LoopThread(self.server)
        self.port = self.thread.port

    def check(self) -> Any:
        return asyncio.run_coroutine_threadsafe(self.app.check(), self.thread.loop).result(20)

    def request(self, method: str, path: str, body: bytes | str | None = None,
                headers: dict[str, str] | None = None) -> tuple[HTTPResponse, bytes]:
        conn = HTTPConnection("127.0.0.1", self.port, timeout=20)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response, response.read()
        finally:
            conn.close()

    def get_json(self, path: str, status: int = 200, **headers: str) -> Any:
        response, body = self.request("GET", path, headers=headers)
        assert response.status == status, body
        assert response.getheader("Content-Type", "").startswith("application/json")
        return json.loads(body)

    def csrf(self, **headers: str) -> str:
        response, body = self.request("GET", "/", headers=headers)
        assert response.status == 200, body
        found = re.search(rb'<meta name="csrf-token" content="([0-9a-f]+)">', body)
        assert found is not None
        return found.group(1).decode()

    def switch(self, mac: str, payload: dict[str, Any], *, csrf: str | None,
               **headers: str) -> tuple[HTTPResponse, Any]:
        sent = {"Content-Type": "application/json", **headers}
        if csrf is not None:
            sent["X-CSRF-Token"] = csrf
        response, body = self.request("POST", f"/api/plugs/{mac}/switch", json.dumps(payload),
                                      sent)
        return response, json.loads(body) if body.startswith(b"{") else body

    def close(self) -> None:
        self.thread.close()


@pytest.fixture
def plugs(tmp_path: Path) -> Iterator[LoopbackPlugs]:
    lab = LoopbackPlugs(tmp_path / "hs.db")
    lab.add("Lamp")
    lab.add("Strip", model="hs300")
    lab.add(HOSTILE, model="hs100")
    with Inventory(lab.db) as inventory:  # a plug whose firmware went KLAP
        inventory.record([DiscoveredPlug("127.0.0.9", 9999, "50:C7:BF:00:00:99", "Heater",
                                         "HS100(UK)", "4.0", "1.1.0", "DEV99", "off", "xor",
                                         True)])
        inventory.record([DiscoveredPlug("127.0.0.9", 9999, "50:C7:BF:00:00:99", "Heater",
                                         "HS100(UK)", "4.0", "1.1.2", "DEV99", None, "klap",
                                         False)])
    yield lab
    lab.close()


@pytest.fixture(autouse=True)
def firewall(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rules covering the first plug only (reading live rules is tested elsewhere)."""
    monkeypatch.setattr(audit_run, "read_firewall", lambda: View(
        "nft: table inet hs100local covering 1 MAC(s)", frozenset({"50:C7:BF:00:00:02"}),
        frozenset()))


@pytest.fixture
def site(plugs: LoopbackPlugs) -> Iterator[Site]:
    now = time.time()
    with EventStore(plugs.db) as store:
        store.record("tls", plugs.hosts["Lamp"], {"outcome": "unknown_ca", "local_port": 443,
                                                  "ja3_hash": "abc"}, at=now - 600,
                     plug=plugs.macs["Lamp"])
        store.record("dns", plugs.hosts["Lamp"], {"name": "n-devs.tplinkcloud.com",
                                                  "type": "A", "action": "redirect"},
                     at=now - 300)
        store.record("ntp", plugs.hosts["Strip"], {"version": 3, "mode": 3, "offset_ms": 5},
                     at=now - 60)
    tally = Counter({("tls", plugs.macs["Lamp"]): 3, ("dns", None): 2})
    running = Site(plugs.db, cfg.WebConfig(listen=(("127.0.0.1", 0),)), tally)
    running.check()
    yield running
    running.close()


def relay(plugs: LoopbackPlugs, alias: str) -> bool:
    return plugs.plugs[alias].server.plug.relay.on


# ------------------------------------------------------------------- pages


def test_the_page_lists_every_plug_escaped_with_switches_chart_and_events(site: Site) -> None:
    response, body = site.request("GET", "/")
    page = body.decode()
    assert response.status == 200 and response.getheader("Content-Type").startswith("text/html")
    assert "script-src 'self'" in response.getheader("Content-Security-Policy")
    for alias in ("Lamp", "Strip", "Heater"):
        assert f">{alias}</td>" in page
    assert "<script>alert" not in page and "&lt;script&gt;alert(&quot;x&quot;)" in page
    # a switch per relay: the plug, the hostile-named plug, 6 outlets of the strip
    assert page.count('<form class="switch"') == 8
    assert "no local control (klap)" in page
    assert 'class="verdict isolated"' in page and 'class="verdict unknown"' in page
    assert "local control lost" in page  # the firmware warning for Heater
    assert "<svg" in page and 'class="bar tls"' in page
    assert "n-devs.tplinkcloud.com A -&gt; redirect" in page  # recent events
    head, head_body = site.request("HEAD", "/")
    assert head.status == 200 and head_body == b""


def test_static_files_and_chart_ranges(site: Site) -> None:
    for name, kind in (("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")):
        response, body = site.request("GET", f"/static/{name}")
        assert response.status == 200 and response.getheader("Content-Type").startswith(kind)
        assert len(body) > 500
    response, _ = site.request("GET", "/static/../app.py")
    assert response.status == 404
    response, body = site.request("GET", "/chart.svg?range=7d")
    assert response.status == 200 and body.startswith(b"<svg")
    response, body = site.request("GET", "/?range=2y")
    assert response.status == 400 and b"1h, 6h, 24h, 7d" in body
    timeline = site.get_json("/api/timeline?range=1h")
    rows = {r["label"]: r for r in timeline["rows"]}
    assert rows["Lamp"]["totals"]["tls"] == 1 and rows["Lamp"]["totals"]["dns"] == 1
    assert rows["Strip"]["totals"]["ntp"] == 1


# --------------------------------------------------------------------- API


def test_api_plugs_contract(site: Site, plugs: LoopbackPlugs) -> None:
    data = site.get_json("/api/plugs")
    assert data["checked_at"].endswith("Z") and data["dns"]["status"] == "off"
    by_alias = {p["alias"]: p for p in data["plugs"]}
    assert set(by_alias) == {"Lamp", "Strip", HOSTILE, "Heater"}
    lamp = by_alias["Lamp"]
    assert {"mac", "host", "port", "model", "protocol", "on", "outlets", "clock_offset_s",
            "verdict", "reason", "cloud", "firewall", "reachable"} <= set(lamp)
    assert lamp["verdict"] == "isolated" and lamp["firewall"] is True
    assert lamp["on"] is False and lamp["reachable"] is True
    assert abs(lamp["clock_offset_s"]) < 2
    strip = by_alias["Strip"]
    assert strip["on"] is None and [o["index"] for o in strip["outlets"]] == [1, 2, 3, 4, 5, 6]
    assert by_alias["Heater"]["controllable"] is False
    assert by_alias["Heater"]["verdict"] == "unknown"


def test_switching_goes_to_the_plug_and_back_into_the_snapshot(site: Site,
                                                               plugs: LoopbackPlugs) -> None:
    csrf = site.csrf()
    mac = plugs.macs["Lamp"]
    response, data = site.switch(mac, {"on": True}, csrf=csrf)
    assert response.status == 200, data
    assert data == {"mac": mac, "alias": "Lamp", "on": True, "outlets": []}
    assert relay(plugs, "Lamp") is True
    assert {p["alias"]: p["on"] for p in site.get_json("/api/plugs")["plugs"]}["Lamp"] is True
    response, data = site.switch(mac.lower().replace(":", "-"), {"on": False}, csrf=csrf)
    assert response.status == 200 and relay(plugs, "Lamp") is False
    # one outlet of the strip, by form as the page posts it without JavaScript
    strip = plugs.macs["Strip"]
    response, _body = site.request(
        "POST", f"/api/plugs/{strip}/switch", f"csrf={csrf}&on=1&outlet=3",
        {"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status == 303 and response.getheader("Location") == "/"
    outlets = plugs.plugs["Strip"].server.plug.outlets
    assert [o.on for o in outlets] == [False, False, True, False, False, False]


@pytest.mark.parametrize(("payload", "status", "text"), [
    ({"on": "maybe"}, 400, "want true or false"),
    ({}, 400, "'on' is missing"),
    ({"on": True, "outlet": 0}, 400, "outlet"),
    ({"on": True, "outlet": "x"}, 400, "outlet"),
    ([1, 2], 400, "JSON object"),
])
def test_switch_bad_bodies_get_400(site: Site, plugs: LoopbackPlugs, payload: Any,
                                   status: int, text: str) -> None:
    response, data = site.switch(plugs.macs["Lamp"], payload, csrf=site.csrf())
    assert response.status == status and text in data["error"]
    assert relay(plugs, "Lamp") is False


def test_switch_refusals(site: Site, plugs: LoopbackPlugs) -> None:
    csrf = site.csrf()
    cases = [
        ("50:C7:BF:00:00:77", {"on": True}, 404, "no plug"),
        ("not-a-mac", {"on": True}, 404, "no plug"),
        ("50:C7:BF:00:00:99", {"on": True}, 409, "klap"),
        (plugs.macs["Strip"], {"on": True, "outlet": 7}, 404, "no outlet 7"),
    ]
    for mac, payload, status, text in cases:
        response, data = site.switch(mac, payload, csrf=csrf)
        assert response.status == status and text in data["error"], (mac, data)
    response, body = site.request("POST", f"/api/plugs/{plugs.macs['Lamp']}/switch",
                                  b"{not json", {"Content-Type": "application/json",
                                                 "X-CSRF-Token": csrf})
    assert response.status == 400 and b"not valid JSON" in body
    response, _ = site.request("GET", f"/api/plugs/{plugs.macs['Lamp']}/switch")
    assert response.status == 405 and response.getheader("Allow") == "POST"
    plugs.stop(HOSTILE)
    response, data = site.switch("50:C7:BF:00:00:04", {"on": True}, csrf=csrf)
    assert response.status == 504 and "did not answer" in data["error"]


def test_a_moved_plug_is_not_switched(site: Site, plugs: LoopbackPlugs) -> None:
    """The inventory's address now answers with another MAC: nothing is switched."""
    with Inventory(plugs.db) as inventory:
        lamp = inventory.get(plugs.macs["Lamp"])
    assert lamp is not None
    strip = plugs.plugs["Strip"]
    with Inventory(plugs.db) as inventory:
        inventory.record([DiscoveredPlug(plugs.hosts["Strip"], strip.port, lamp.mac, "Lamp",
                                         lamp.model, lamp.hw_ver, lamp.sw_ver, lamp.device_id,
                                         "off", "xor", True)])
    response, data = site.switch(lamp.mac, {"on": True}, csrf=site.csrf())
    assert response.status == 409 and "another device" in data["error"]
    assert not any(o.on for o in strip.server.plug.outlets) and relay(plugs, "Lamp") is False


def test_csrf_and_cross_site_posts_are_refused(site: Site, plugs: LoopbackPlugs) -> None:
    mac = plugs.macs["Lamp"]
    csrf = site.csrf()
    for token, headers in ((None, {}), ("0" * 64, {}), (None, {"Origin": "null"}),
                           (csrf, {"Origin": "http://evil.example"}),
                           (csrf, {"Sec-Fetch-Site": "cross-site"})):
        response, _data = site.switch(mac, {"on": True}, csrf=token, **headers)
        assert response.status == 403, (token, headers)
    assert relay(plugs, "Lamp") is False
    response, _ = site.switch(mac, {"on": True}, csrf=csrf,
                              Origin=f"http://127.0.0.1:{site.port}")
    assert response.status == 200 and relay(plugs, "Lamp") is True


def test_an_open_dashboard_answers_loopback_host_names_only(site: Site) -> None:
    """DNS rebinding: a page from evil.example re-pointed at 127.0.0.1 reads nothing."""
    response, body = site.request("GET", "/", headers={"Host": "evil.example:8099"})
    assert response.status == 421 and b"csrf" not in body
    for host in ("localhost:1", "127.0.0.1", "[::1]:8099"):
        response, _ = site.request("GET", "/api/plugs", headers={"Host": host})
        assert response.status == 200, host


def test_events_api_filters_and_rejects_bad_parameters(site: Site,
                                                       plugs: LoopbackPlugs) -> None:
    every = site.get_json("/api/events")["events"]
    assert [e["kind"] for e in every] == ["tls", "dns", "ntp"]
    assert every[0]["plug"] == "Lamp" and every[0]["plug_mac"] == plugs.macs["Lamp"]
    assert [e["kind"] for e in site.get_json("/api/events?kind=dns,ntp")["events"]] == \
        ["dns", "ntp"]
    # the unattributed DNS event counts as Lamp's: it came from Lamp's address
    assert [e["kind"] for e in site.get_json("/api/events?plug=Lamp")["events"]] == \
        ["tls", "dns"]
    assert [e["kind"] for e in site.get_json("/api/events?limit=1")["events"]] == ["ntp"]
    assert site.get_json("/api/events?since=2m")["events"][0]["kind"] == "ntp"
    first = every[0]["id"]
    assert len(site.get_json(f"/api/events?after_id={first}")["events"]) == 2
    for query, text in (("limit=0", "out of range"), ("limit=x", "whole number"),
                        ("since=yesterdayish", "since"), ("plug=Nobody", "no plug")):
        error = site.get_json(f"/api/events?{query}", status=404 if "plug" in query else 400)
        assert text in error["error"], query


def test_report_api_is_the_cli_report(site: Site, plugs: LoopbackPlugs) -> None:
    report = site.get_json("/api/report?since=24h")
    by_alias = {p["alias"]: p for p in report["plugs"]}
    assert by_alias["Lamp"]["cloud"]["count"] == 1
    assert by_alias["Lamp"]["names"] == {"n-devs.tplinkcloud.com": 1}
    assert by_alias["Strip"]["ntp_requests"] == 1
    assert [c["kind"] for c in by_alias["Heater"]["firmware_changes"]] == \
        ["firmware", "protocol"]


def test_metrics_parse_as_prometheus(site: Site, plugs: LoopbackPlugs) -> None:
    site.request("GET", "/nope")  # one 404 before
    response, body = site.request("GET", "/metrics")
    assert response.status == 200
    assert response.getheader("Content-Type").startswith("text/plain; version=0.0.4")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(body.decode())
               for s in family.samples}
    lamp = (("alias", "Lamp"), ("plug", plugs.macs["Lamp"]))
    assert samples[("hs100local_cloud_attempts_total", lamp)] == 3
    assert samples[("hs100local_dns_sinkholed_total", (("alias", ""), ("plug", "")))] == 2
    assert samples[("hs100local_plugs", (("verdict", "isolated"),))] == 1
    assert samples[("hs100local_plugs", (("verdict", "unknown"),))] == 3
    assert samples[("hs100local_plug_isolated", lamp)] == 1
    assert samples[("hs100local_plug_relay_on", lamp)] == 0
    hostile = (("alias", HOSTILE), ("plug", plugs.macs[HOSTILE]))
    assert samples[("hs100local_plug_reachable", hostile)] == 1
    assert samples[("hs100local_http_requests_total", (("code", "4xx"),))] == 1


def test_unknown_paths_and_methods(site: Site) -> None:
    response, body = site.request("GET", "/nope")
    assert response.status == 404 and b"no such page" in body
    response, body = site.request("GET", "/api/nope")
    assert response.status == 404 and json.loads(body)["error"]
    response, _ = site.request("DELETE", "/api/plugs")
    assert response.status == 405 and "GET" in response.getheader("Allow")
    response, body = site.request("POST", "/api/plugs", b"",
                                  {"X-CSRF-Token": site.csrf()})
    assert response.status == 405
    response, _ = site.request("POST", "/api/check", b"", {"X-CSRF-Token": site.csrf()})
    assert response.status == 200


# -------------------------------------------------------------------- auth


def test_token_auth_for_scripts_and_browsers(plugs: LoopbackPlugs) -> None:
    running = Site(plugs.db, cfg.WebConfig(listen=(("127.0.0.1", 0),), token=TOKEN))
    try:
        response, _ = running.request("GET", "/")
        assert response.status == 303 and response.getheader("Location") == "/login"
        for path in ("/api/plugs", "/metrics", "/chart.svg"):
            response, body = running.request("GET", path)
            assert response.status in (401, 303), path
        response, _ = running.request("GET", "/api/plugs")
        assert response.status == 401 and "Bearer" in response.getheader("WWW-Authenticate")
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        assert running.get_json("/api/plugs", **bearer)["plugs"]
        # a script with the bearer token needs no CSRF token; the browser's cookie does
        response, _ = running.switch(plugs.macs["Lamp"], {"on": True}, csrf=None, **bearer)
        assert response.status == 200 and relay(plugs, "Lamp") is True
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        response, body = running.request("POST", "/login", "token=wrong", form)
        assert response.status == 403 and b"Wrong token" in body
        response, _ = running.request("POST", "/login", f"token={TOKEN}", form)
        assert response.status == 303
        cookie = response.getheader("Set-Cookie")
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie
        session = {"Cookie": cookie.split(";")[0]}
        csrf = running.csrf(**session)
        response, _ = running.switch(plugs.macs["Lamp"], {"on": False}, csrf=None, **session)
        assert response.status == 403
        response, _ = running.switch(plugs.macs["Lamp"], {"on": False}, csrf=csrf, **session)
        assert response.status == 200 and relay(plugs, "Lamp") is False
        response, _ = running.request("GET", f"/api/plugs?token={TOKEN}")
        assert response.status == 401  # never a secret in a URL
    finally:
        running.close()


def test_wrong_credentials_are_rate_limited(plugs: LoopbackPlugs) -> None:
    running = Site(plugs.db, cfg.WebConfig(listen=(("127.0.0.1", 0),), token=TOKEN))
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    try:
        for _ in range(5):
            response, _ = running.request("POST", "/login", "token=guess", form)
            assert response.status == 403
        for _ in range(5):
            response, _ = running.request("GET", "/api/plugs",
                                          headers={"Authorization": "Bearer guess"})
            assert response.status == 401
        response, body = running.request("POST", "/login", f"token={TOKEN}", form)
        assert response.status == 429 and b"Too many" in body
        response, body = running.request("GET", "/api/plugs",
                                         headers={"Authorization": "Bearer guess"})
        assert response.status == 429 and b"wait a minute" in body
        # the owner's token and session still get in: a stranger cannot lock them out
        response, _ = running.request("GET", "/api/plugs",
                                      headers={"Authorization": f"Bearer {TOKEN}"})
        assert response.status == 200
        cookie = f"hs100local_session={running.app.access.session_value()}"
        response, _ = running.request("GET", "/api/plugs", headers={"Cookie": cookie})
        assert response.status == 200
    finally:
        running.close()
    basic = Site(plugs.db, cfg.WebConfig(listen=(("127.0.0.1", 0),), user="u", password="password"))
    try:
        wrong = {"Authorization": "Basic " + base64.b64encode(b"u:guess").decode()}
        statuses = [basic.request("GET", "/", headers=wrong)[0].status for _ in range(11)]
        assert statuses == [401] * 10 + [429]
    finally:
        basic.close()


def test_basic_auth(plugs: LoopbackPlugs) -> None:
    running = Site(plugs.db, cfg.WebConfig(listen=(("127.0.0.1", 0),), user="admin",
                                           password="correct horse"))
    try:
        response, _ = running.request("GET", "/")
        assert response.status == 401
        assert response.getheader("WWW-Authenticate").startswith('Basic realm="hs100local"')
        for creds in ("admin:wrong", "root:correct horse", "admin", "", "\xff"):
            value = base64.b64encode(creds.encode("latin-1")).decode()
            response, _ = running.request("GET", "/", headers={"Authorization": f"Basic {value}"})
            assert response.status == 401, creds
        response, _ = running.request("GET", "/", headers={"Authorization": "Basic !!!"})
        assert response.status == 401
        running.app.access._failures.clear()  # the wrong guesses above count toward a lockout
        good = {"Authorization": "Basic " + base64.b64encode(b"admin:correct horse").decode()}
        csrf = running.csrf(**good)
        # a browser resends basic credentials by itself, so POSTs still need the CSRF token
        response, _ = running.switch(plugs.macs["Lamp"], {"on": True}, csrf=None, **good)
        assert response.status == 403
        response, _ = running.switch(plugs.macs["Lamp"], {"on": True}, csrf=csrf, **good)
        assert response.status == 200 and relay(plugs, "Lamp") is True
        # with authentication any Host name is fine (the credentials guard it)
        response, _ = running.request("GET", "/api/plugs", headers={**good,
                                                                    "Host": "plugs.lan"})
        assert response.status == 200
    finally:
        running.close()


def test_web_config_rules(tmp_path: Path) -> None:
    assert cfg.from_mapping({"web": {}}).web.listen == (("127.0.0.1", 8099),)
    assert cfg.ServeConfig().web.listen == ()
    web = cfg.from_mapping({"web": {"listen": ["0.0.0.0:80"], "token": TOKEN}}).web
    assert web.auth == "token" and not web.loopback_only
    secret = tmp_path / "token"
    secret.write_text(TOKEN + "\n")
    assert cfg.from_mapping({"web": {"token-file": str(secret)}}).web.token == TOKEN
    assert TOKEN not in repr(cfg.from_mapping({"web": {"token": TOKEN}}))
    for bad, text in (({"listen": "192.0.2.1"}, "needs a 'token'"),
                      ({"token": "short"}, "at least 16"),
                      ({"token": " " * 20}, "without spaces"),
                      ({"token": "é" * 20}, "printable ASCII"),
                      ({"user": "a", "password": "short"}, "at least 8"),
                      ({"user": "admin"}, "go together"),
                      ({"token": TOKEN, "user": "a", "password": "b" * 8}, "not both"),
                      ({"token-file": str(tmp_path / "missing")}, "cannot read"),
                      ({"refresh": 1}, "out of range"),
                      ({"port": 1}, "unknown key"),
                      ("on", "want a table")):
        with pytest.raises(cfg.ConfigError, match=re.escape(text)):
            cfg.from_mapping({"web": bad})
    base = cfg.from_mapping({"web": {"token": TOKEN}})
    flagged = cfg.from_mapping({"web": {"listen": ["192.0.2.1:9000"]}}, base=base)
    assert flagged.web.token == TOKEN and flagged.web.listen == (("192.0.2.1", 9000),)
    assert replace(base, web=cfg.WebConfig()).web.auth == "none"


def test_serve_refuses_a_dashboard_beyond_loopback_without_auth(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from hs100local.cli import cli

    result = CliRunner().invoke(cli, ["serve", "--no-dns", "--no-ntp", "--no-cloud",
                                      "--web", "192.0.2.1:8099", "--db", str(tmp_path / "d")])
    assert result.exit_code == 2 and "needs a 'token'" in result.output
    result = CliRunner().invoke(cli, ["serve", "--web", "127.0.0.1", "--no-web"])
    assert result.exit_code == 2 and "contradict" in result.output


def test_sessions_expire_on_the_server_and_any_cookie_of_the_name_counts(
        plugs: LoopbackPlugs) -> None:
    running = Site(plugs.db, cfg.WebConfig(listen=(("127.0.0.1", 0),), token=TOKEN))
    access = running.app.access
    try:
        old = access.session_value(now=time.time() - 31 * 86400)
        fresh = access.session_value()
        forged = f"{int(time.time())}.{'0' * 64}"
        for value, status in ((old, 401), (forged, 401), ("x", 401), (fresh, 200)):
            response, _ = running.request("GET", "/api/plugs",
                                          headers={"Cookie": f"hs100local_session={value}"})
            assert response.status == status, value
        tossed = f"hs100local_session=junk; other=1; hs100local_session={fresh}"
        response, _ = running.request("GET", "/api/plugs", headers={"Cookie": tossed})
        assert response.status == 200
    finally:
        running.close()


def test_an_open_dashboard_refuses_proxied_requests(site: Site) -> None:
    for header in ("X-Forwarded-For", "Forwarded", "Via", "X-Real-IP"):
        response, _ = site.request("GET", "/api/plugs", headers={header: "203.0.113.9"})
        assert response.status == 421, header


@pytest.mark.parametrize("since", ["1000000d", "9999-12-31T23:59:59-23:59",
                                   "0001-01-01T00:00%2B23:59", "9" * 400 + "d", "nan"])
def test_far_off_times_are_400_not_500(site: Site, since: str) -> None:
    for path in ("/api/report", "/api/events"):
        response, body = site.request("GET", f"{path}?since={since}")
        assert response.status == 400, (path, since, body)


@pytest.mark.parametrize("body", [b'{"on":true,"outlet":Infinity}', b'{"on":true,"outlet":1e400}',
                                  b'{"on":NaN}', b"[" * 5000, b'{"on":true,"outlet":1.9}',
                                  b'{"on":true,"outlet":true}', b"\xff\xfe"])
def test_odd_switch_bodies_are_400(site: Site, plugs: LoopbackPlugs, body: bytes) -> None:
    response, data = site.request("POST", f"/api/plugs/{plugs.macs['Strip']}/switch", body,
                                  {"Content-Type": "application/json",
                                   "X-CSRF-Token": site.csrf()})
    assert response.status == 400, (body, data)
    assert not any(o.on for o in plugs.plugs["Strip"].server.plug.outlets)
