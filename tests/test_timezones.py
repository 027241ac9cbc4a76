"""Tests for hs100local.timezones: the firmware index table and host-zone mapping.

The table is data typed in by hand, so these tests check it against tzdata
(every zone loads, labels agree with real offsets) rather than against itself.
"""

from __future__ import annotations

import os
import re
import sys
import zoneinfo
from datetime import datetime, timedelta, timezone
from pathlib import Path

import prockit
import pytest

from hs100local import timezones as tzmod
from hs100local.timezones import (
    TIMEZONES,
    TimeZone,
    host_index,
    host_zone_name,
    index_for_zone,
    is_stable,
    zone,
    zoneinfo_for,
)

REPO = Path(__file__).resolve().parents[1]

# Indices whose place changed its standard offset after the firmware's label
# was written (or whose label is wrong, 59 Baghdad), with today's offset in
# minutes.  Each may show either the label's offset (older tzdata) or this one.
DRIFTED = {
    20: -240,  # Caracas: -04:30 -> -04:00 (2016)
    21: -180,  # Asuncion: permanent -03:00 (2024)
    31: -120,  # Greenland: -03:00 -> -02:00 (2023)
    37: 60,  # Casablanca: +01:00 except Ramadan (2018)
    46: 120,  # Windhoek: +02:00 (2017)
    47: 180,  # Amman: permanent +03:00 (2022)
    51: 180,  # Damascus: permanent +03:00 (2022)
    55: 180,  # Istanbul: permanent +03:00 (2016)
    59: 180,  # Baghdad: firmware label says +02:00, Baghdad has been +03:00 since 2007
    78: 300,  # Astana: +05:00 (2024)
    80: 420,  # Novosibirsk: +07:00 (2016)
    99: 660,  # Magadan: +11:00 (2016)
}

KNOWN = {
    0: "Etc/GMT+12",
    1: "Etc/GMT+11",
    5: "Etc/GMT+8",
    6: "America/Los_Angeles",
    9: "Etc/GMT+7",
    10: "America/Denver",
    12: "Etc/GMT+6",
    13: "America/Chicago",
    17: "Etc/GMT+5",
    18: "America/New_York",
    20: "America/Caracas",
    22: "Etc/GMT+4",
    23: "America/Halifax",
    34: "Etc/GMT+2",
    38: "UTC",
    39: "Europe/London",
    41: "Europe/Berlin",
    105: "Etc/GMT-12",
}

_LABEL = re.compile(r"^\(UTC(?:([+-])(\d\d):(\d\d))?\) \S")


def _label_minutes(description: str) -> int:
    """Parse the label independently of TimeZone.offset_minutes."""
    m = _LABEL.match(description)
    assert m, f"malformed description {description!r}"
    if m.group(1) is None:
        return 0
    minutes = int(m.group(2)) * 60 + int(m.group(3))
    return -minutes if m.group(1) == "-" else minutes


def _samples() -> list[datetime]:
    start = datetime.now(timezone.utc).replace(day=1, hour=12, minute=0, second=0, microsecond=0)
    return [start + timedelta(days=15 * k) for k in range(48)]


def _offsets(name: str) -> set[int]:
    tz = zoneinfo.ZoneInfo(name)
    return {int(t.astimezone(tz).utcoffset().total_seconds()) for t in _samples()}


# --- the table ----------------------------------------------------------------


def test_table_has_110_entries_indexed_by_position() -> None:
    assert len(TIMEZONES) == 110
    for i, entry in enumerate(TIMEZONES):
        assert isinstance(entry, TimeZone)
        assert entry.index == i


def test_iana_names_are_unique() -> None:
    names = [e.iana for e in TIMEZONES]
    dupes = {n for n in names if names.count(n) > 1}
    assert not dupes


@pytest.mark.parametrize("entry", TIMEZONES, ids=lambda e: f"{e.index}-{e.iana}")
def test_iana_name_loads(entry: TimeZone) -> None:
    assert entry.iana in zoneinfo.available_timezones()
    tz = zoneinfo.ZoneInfo(entry.iana)
    assert datetime(2030, 1, 1, tzinfo=tz).utcoffset() is not None


@pytest.mark.parametrize("entry", TIMEZONES, ids=lambda e: f"{e.index}-{e.iana}")
def test_description_offset_is_standard_offset(entry: TimeZone) -> None:
    label = _label_minutes(entry.description)
    assert entry.offset_minutes == label
    tz = zoneinfo.ZoneInfo(entry.iana)
    year = datetime.now(timezone.utc).year + 1
    standard = set()
    for month in (1, 7):
        local = datetime(year, month, 15, 12, tzinfo=timezone.utc).astimezone(tz)
        standard.add(int((local.utcoffset() - local.dst()).total_seconds()) // 60)
    allowed = {label, DRIFTED[entry.index]} if entry.index in DRIFTED else {label}
    assert standard & allowed, f"{entry}: standard offset(s) {standard}, label says {label}"


def test_drifted_entries_are_flagged_unstable() -> None:
    for index, now in DRIFTED.items():
        if now * 60 in _offsets(TIMEZONES[index].iana):
            assert not is_stable(index), TIMEZONES[index]


@pytest.mark.parametrize(("index", "iana"), sorted(KNOWN.items()))
def test_known_indices(index: int, iana: str) -> None:
    assert zone(index).iana == iana
    assert TIMEZONES[index].iana == iana


def test_known_descriptions() -> None:
    assert zone(41).description == "(UTC+01:00) Amsterdam, Berlin, Bern"
    assert zone(38).description == "(UTC) Coordinated Universal Time"
    assert zone(20).description == "(UTC-04:30) Caracas"
    assert zone(109).description == "(UTC+14:00) Kiritimati Island"


def test_fixed_slots_have_no_dst_and_daylight_slots_do() -> None:
    for fixed, daylight in ((5, 6), (9, 10), (12, 13), (17, 18), (22, 23)):
        assert len(_offsets(zone(fixed).iana)) == 1
        assert len(_offsets(zone(daylight).iana)) == 2
        assert _offsets(zone(fixed).iana) == {zone(fixed).offset_minutes * 60}


# --- zone / zoneinfo_for -------------------------------------------------------


@pytest.mark.parametrize("bad", [-1, 110, 1000])
def test_zone_out_of_range(bad: int) -> None:
    with pytest.raises(ValueError, match=rf"{bad}.*0\.\.109"):
        zone(bad)


@pytest.mark.parametrize("bad", ["3", 3.0, True, None])
def test_zone_rejects_non_int(bad: object) -> None:
    with pytest.raises(ValueError):
        zone(bad)  # type: ignore[arg-type]


def test_zoneinfo_for() -> None:
    tz = zoneinfo_for(18)
    assert isinstance(tz, zoneinfo.ZoneInfo)
    assert tz.key == "America/New_York"
    winter = datetime(2030, 1, 15, 12, tzinfo=timezone.utc).astimezone(tz)
    assert winter.utcoffset() == timedelta(hours=-5)
    with pytest.raises(ValueError):
        zoneinfo_for(110)


# --- index_for_zone ------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Europe/Paris", 41),
        ("Europe/Berlin", 41),
        ("America/Detroit", 18),
        ("America/New_York", 18),
        ("Asia/Kolkata", 75),
        ("Asia/Calcutta", 75),
        ("America/Phoenix", 7),
        ("America/Los_Angeles", 6),
        ("America/Vancouver", 6),
        ("Europe/Dublin", 39),
        ("Europe/Kyiv", 54),
        ("Etc/GMT+7", 9),
        ("Etc/GMT+5", 17),
        ("UTC", 38),
        ("Etc/UTC", 38),
        ("GMT", 38),
        ("Etc/GMT", 38),
        ("Etc/Universal", 38),
    ],
)
def test_index_for_zone(name: str, expected: int) -> None:
    assert index_for_zone(name) == expected


def test_index_for_fixed_plus_three() -> None:
    index = index_for_zone("Etc/GMT-3")
    assert _offsets(zone(index).iana) == {3 * 3600}
    assert zone(index).offset_minutes == 180
    assert is_stable(index)


@pytest.mark.parametrize("name", ["America/Caracas", "Europe/Istanbul", "America/Mexico_City"])
def test_index_for_zone_avoids_outdated_slots(name: str) -> None:
    """A slot whose firmware rules are stale must not be chosen when a stable one fits."""
    index = index_for_zone(name)
    assert is_stable(index)
    assert _offsets(zone(index).iana) == _offsets(name)
    assert zone(index).offset_minutes * 60 == min(_offsets(name))


def test_index_for_zone_no_equivalent() -> None:
    with pytest.raises(ValueError, match="Pacific/Chatham"):
        index_for_zone("Pacific/Chatham")


@pytest.mark.parametrize("name", ["Nowhere/Atlantis", "../etc/passwd", ""])
def test_index_for_zone_unknown(name: str) -> None:
    with pytest.raises(ValueError):
        index_for_zone(name)


def test_is_stable_examples() -> None:
    for index in (5, 6, 18, 38, 39, 41, 75, 90, 96):
        assert is_stable(index), zone(index)
    for index in (20, 55, 59, 80, 99):
        assert not is_stable(index), zone(index)


def test_round_trip() -> None:
    names = [e.iana for e in TIMEZONES]
    checked = 0
    for entry in TIMEZONES:
        if names.count(entry.iana) != 1:
            continue
        got = index_for_zone(entry.iana)
        if is_stable(entry.index):
            assert got == entry.index, f"{entry} -> {got}"
            checked += 1
        else:
            # An outdated slot is only kept if no stable slot behaves the same.
            assert got == entry.index or is_stable(got), f"{entry} -> {got}"
    assert checked >= 80


# --- host zone -----------------------------------------------------------------


@pytest.fixture
def no_host_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Point the module's /etc paths at files that do not exist."""
    monkeypatch.setattr(tzmod, "_LOCALTIME", str(tmp_path / "localtime"))
    monkeypatch.setattr(tzmod, "_TIMEZONE_FILE", str(tmp_path / "timezone"))
    monkeypatch.delenv("TZ", raising=False)
    return tmp_path


@pytest.mark.parametrize(
    ("tz", "expected"),
    [
        (":Europe/Berlin", "Europe/Berlin"),
        ("America/New_York", "America/New_York"),
        ("/usr/share/zoneinfo/Asia/Tokyo", "Asia/Tokyo"),
        (":/usr/share/zoneinfo/posix/Australia/Sydney", "Australia/Sydney"),
    ],
)
def test_host_zone_name_from_tz(
    monkeypatch: pytest.MonkeyPatch, no_host_files: Path, tz: str, expected: str
) -> None:
    monkeypatch.setenv("TZ", tz)
    assert host_zone_name() == expected


def test_host_zone_name_ignores_non_zone_tz(
    monkeypatch: pytest.MonkeyPatch, no_host_files: Path
) -> None:
    monkeypatch.setenv("TZ", "CET-1CEST,M3.5.0,M10.5.0/3")
    assert host_zone_name() is None


def test_host_zone_name_from_localtime_symlink(
    monkeypatch: pytest.MonkeyPatch, no_host_files: Path
) -> None:
    link = no_host_files / "localtime"
    link.symlink_to("../usr/share/zoneinfo/America/Chicago")
    (no_host_files / "timezone").write_text("Europe/London\n")
    assert host_zone_name() == "America/Chicago"


def test_host_zone_name_from_etc_timezone(no_host_files: Path) -> None:
    (no_host_files / "timezone").write_text("Europe/London\n")
    assert host_zone_name() == "Europe/London"


def test_host_zone_name_unknown(no_host_files: Path) -> None:
    (no_host_files / "timezone").write_text("garbage\n")
    assert host_zone_name() is None


def test_host_index(monkeypatch: pytest.MonkeyPatch, no_host_files: Path) -> None:
    assert host_index() == 38
    assert host_index(default=6) == 6
    monkeypatch.setenv("TZ", "Europe/Paris")
    assert host_index() == 41
    monkeypatch.setenv("TZ", "Pacific/Chatham")
    assert host_index() == 38
    assert host_index(default=104) == 104


def test_import_is_light() -> None:
    """The CLI imports this at start-up; zoneinfo/datetime must stay lazy."""
    code = (
        "import sys, hs100local.timezones; "
        "print(sorted(m for m in ('zoneinfo', 'datetime', '_datetime') if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = prockit.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
