"""A real browser against the dashboard of a real `hs100local serve` process.

Headless Chromium (Debian's chromium + chromium-driver, driven by Selenium) loads
the page from `serve --web 127.0.0.1:0` on loopback; the plugs are emulators on
their own loopback addresses. Clicking a plug's switch must change the emulator's
relay (through the page's script, and once without JavaScript through the plain
form), zooming the chart must swap the SVG, and a screenshot of the page is
saved (its path is printed; ``HS100LOCAL_ARTIFACTS=DIR`` keeps a copy there).

Skips without chromium/chromedriver; with ``HS100LOCAL_REQUIRE_BROWSER=1`` (set by
``.ci/run``) that is a failure instead.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import time
from collections.abc import Iterator
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

import prockit
import pytest
from loopback_plugs import LoopbackPlugs
from servekit import Serve

from hs100local.events import EventStore

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
REQUIRE_ENV = "HS100LOCAL_REQUIRE_BROWSER"

if CHROMIUM is None or DRIVER is None:
    reason = "needs Debian's chromium and chromium-driver (apt-get install chromium " \
             "chromium-driver)"
    if os.environ.get(REQUIRE_ENV) == "1":
        raise RuntimeError(f"{REQUIRE_ENV}=1 but the browser test cannot run: {reason}")
    pytest.skip(reason, allow_module_level=True)

from selenium import webdriver  # noqa: E402 - only once the browser is known to exist
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.expected_conditions import staleness_of  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

WAIT = 15


@pytest.fixture
def plugs(tmp_path: Path) -> Iterator[LoopbackPlugs]:
    lab = LoopbackPlugs(tmp_path / "hs.db")
    lab.add("Lamp")
    lab.add("Desk fan", model="hs100")
    lab.add("Strip", model="hs300")
    yield lab
    lab.close()


@pytest.fixture
def served(tmp_path: Path, plugs: LoopbackPlugs) -> Iterator[Serve]:
    now = time.time()
    with EventStore(plugs.db) as store:  # something for the chart to draw
        for minutes in range(0, 24 * 60, 45):
            store.record("dns", plugs.hosts["Lamp"], {"name": "n-devs.tplinkcloud.com",
                                                      "type": "A", "action": "redirect"},
                         at=now - minutes * 60)
            store.record("tls", plugs.hosts["Lamp"], {"outcome": "unknown_ca"},
                         at=now - minutes * 60 - 1)
            store.record("ntp", plugs.hosts["Strip"], {"version": 3, "mode": 3},
                         at=now - minutes * 90)
    config = tmp_path / "hs100local.toml"
    config.write_text(f'dns = false\nntp = false\ncloud = ["127.0.0.1:0"]\n'
                      f'db = "{plugs.db}"\ntime-interval = 0\ndiscover-interval = 0\n'
                      '[web]\nlisten = "127.0.0.1:0"\n')
    running = Serve(config)
    yield running
    assert running.stop() == 0


def driver_service() -> Service:
    """chromedriver (and so Chromium) with default signal dispositions (prockit)."""
    return Service(DRIVER, popen_kw=prockit.popen_kwargs())


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # type: ignore[assignment]
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,900", "--no-first-run", "--disable-extensions",
                "--disable-background-networking", "--disable-sync",
                "--disable-component-update", "--disable-default-apps",
                f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=driver_service())
    driver.set_page_load_timeout(WAIT)
    yield driver
    driver.quit()


def checked(port: int) -> None:
    """Have the dashboard ask the plugs now and wait for it (POST /api/check answers
    when done), so the page shows their state rather than "checking…"."""
    conn = HTTPConnection("127.0.0.1", port, timeout=WAIT)
    conn.request("GET", "/")
    page = conn.getresponse().read().decode()
    csrf = re.search(r'name="csrf-token" content="([0-9a-f]+)"', page)
    assert csrf is not None
    conn.request("POST", "/api/check", b"", {"X-CSRF-Token": csrf.group(1)})
    response = conn.getresponse()
    assert response.status == 200, response.read()
    response.read()
    conn.close()


def switch_button(driver: Any, alias: str, outlet: int | None = None) -> Any:
    row = driver.find_element(By.XPATH, f'//tr[td[@class="alias" and text()="{alias}"]]')
    forms = row.find_elements(By.CSS_SELECTOR, "form.switch")
    form = forms[0] if outlet is None else forms[outlet - 1]
    return form.find_element(By.TAG_NAME, "button")


def has_class(button: Any, name: str) -> bool:
    return name in (button.get_attribute("class") or "").split()


def relay(plugs: LoopbackPlugs, alias: str) -> bool:
    return plugs.plugs[alias].server.plug.relay.on


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_a_browser_switches_a_plug_zooms_the_chart_and_is_screenshot(
        served: Serve, plugs: LoopbackPlugs, browser: Any, tmp_path: Path) -> None:
    port = served.ports["web"]
    checked(port)
    browser.get(f"http://127.0.0.1:{port}/")
    assert browser.title == "hs100local"
    lamp = switch_button(browser, "Lamp")
    assert has_class(lamp, "off") and relay(plugs, "Lamp") is False

    lamp.click()  # the script posts with the CSRF header and repaints from the answer
    WebDriverWait(browser, WAIT).until(lambda d: has_class(switch_button(d, "Lamp"), "on"))
    assert relay(plugs, "Lamp") is True
    assert relay(plugs, "Desk fan") is False  # only that plug
    served.wait_log(r"dashboard: Lamp \(50:C7:BF:00:00:02\) switched on from 127\.0\.0\.1")

    outlet = switch_button(browser, "Strip", outlet=2)
    outlet.click()
    WebDriverWait(browser, WAIT).until(
        lambda d: has_class(switch_button(d, "Strip", outlet=2), "on"))
    assert [o.on for o in plugs.plugs["Strip"].server.plug.outlets] == \
        [False, True, False, False, False, False]

    browser.find_element(By.CSS_SELECTOR, 'nav.ranges a[data-range="7d"]').click()
    WebDriverWait(browser, WAIT).until(lambda d: d.current_url.endswith("/?range=7d"))
    WebDriverWait(browser, WAIT).until(
        lambda d: "7 d until" in (d.find_element(By.CSS_SELECTOR, "#chart svg")
                               .get_attribute("aria-label") or ""))
    assert browser.find_element(By.CSS_SELECTOR, "nav.ranges a.current").text == "7d"
    # the page's own script raised nothing
    errors = [e for e in browser.get_log("browser") if e.get("level") == "SEVERE"]
    assert errors == []

    shot = tmp_path / "dashboard.png"
    assert browser.save_screenshot(str(shot))
    width, height = png_size(shot)
    assert (width, height) == tuple(browser.execute_script(
        "return [window.innerWidth, window.innerHeight]")) or width >= 800
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one
    keep = os.environ.get("HS100LOCAL_ARTIFACTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / "dashboard.png")
    print(f"screenshot: {shot}")


def test_without_javascript_the_switch_is_a_form(served: Serve, plugs: LoopbackPlugs,
                                                 tmp_path: Path) -> None:
    """The same page with scripts off: the form posts, the server redirects back."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # type: ignore[assignment]
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--user-data-dir={tmp_path / 'nojs'}"):
        options.add_argument(arg)
    options.add_experimental_option("prefs",
                                    {"profile.managed_default_content_settings.javascript": 2})
    driver = webdriver.Chrome(options=options, service=driver_service())
    try:
        port = served.ports["web"]
        checked(port)
        driver.get(f"http://127.0.0.1:{port}/")
        button = switch_button(driver, "Desk fan")
        button.click()  # a form post, then the server's redirect loads the page anew
        WebDriverWait(driver, WAIT).until(staleness_of(button))
        WebDriverWait(driver, WAIT).until(lambda d: d.execute_script(
            "return document.readyState") == "complete")
        assert has_class(switch_button(driver, "Desk fan"), "on")
        assert driver.current_url == f"http://127.0.0.1:{port}/"
        assert relay(plugs, "Desk fan") is True and relay(plugs, "Lamp") is False
    finally:
        driver.quit()
