"""The HS100 firmware's time-zone table, mapped to IANA zones.

Why this module exists: the plugs have no battery-backed clock and no notion of
IANA zone names.  Legacy firmware stores the time zone as a bare index 0..109
into a table baked into the firmware (``time.get_timezone`` -> ``{"index": N}``,
``time.set_timezone`` takes the index plus the local wall-clock time), and it
applies that table's offset and daylight-saving rules itself.  To set a plug's
clock from a host, or to interpret the local time a plug reports, we need a
translation between those indices and real zones.

The descriptions are the firmware's own strings (typos included).  They match
the Windows time-zone list of about 2015, which is also roughly when the
firmware's rules were frozen.  Since then several regions changed their offset
or dropped/added daylight saving (Caracas, Istanbul, Novosibirsk, ...).  For
those indices the IANA zone (which follows the real place) and the firmware no
longer agree, so :func:`is_stable` reports them and :func:`index_for_zone`
steers around them when an equivalent index exists.

Import cost matters: this module is on the CLI start-up path, so it only
imports :mod:`typing` at top level; :mod:`datetime`, :mod:`zoneinfo` and
:mod:`os` are imported inside the functions that need them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    import datetime

__all__ = [
    "TIMEZONES",
    "TimeZone",
    "host_index",
    "host_now",
    "host_zone_name",
    "index_for_zone",
    "is_stable",
    "wall_time_problem",
    "zone",
    "zoneinfo_for",
]


class TimeZone(NamedTuple):
    """One firmware time-zone slot.

    ``index`` is what goes over the wire, ``iana`` the closest real zone (for
    converting times on the host), ``description`` the firmware's own label, so
    users see the same text the official app showed them.
    """

    index: int
    iana: str
    description: str

    @property
    def offset_minutes(self) -> int:
        """Base UTC offset stated by the description, in minutes.

        This is the standard offset the firmware applies for the slot; it is
        parsed from the label rather than from tzdata because the firmware's
        rules, not today's, decide what the plug does.
        """
        desc = self.description
        if desc.startswith("(UTC)"):
            return 0
        # "(UTC+05:45) ..." -> sign at 4, hours at 5:7, minutes at 8:10.
        sign = -1 if desc[4] == "-" else 1
        return sign * (int(desc[5:7]) * 60 + int(desc[8:10]))


# Judgement calls (each IANA name is used exactly once; no duplicates needed):
# * 1, 34, 105 ("Coordinated Universal Time" at -11, -2, +12) and 0 (date line)
#   have no place, so they get fixed Etc zones.  Etc/GMT signs are POSIX-style,
#   i.e. inverted: Etc/GMT+8 is UTC-08:00.
# * 5/9/12/17/22 "... Standard Time" are the fixed-offset slots (no DST), so
#   they get Etc zones; 6/10/13/18/23 "... Daylight Time" are the DST slots.
# * 43 uses Europe/Brussels, not Europe/Paris, so that Paris resolves by
#   behaviour to 41 like every other Central European zone.
# * 42 Europe/Belgrade, 44 Europe/Warsaw, 48 Europe/Athens, 54 Europe/Helsinki,
#   60 Asia/Riyadh, 65 Asia/Dubai, 72 Asia/Tashkent, 82 Asia/Bangkok,
#   84 Asia/Shanghai, 86 Asia/Singapore, 97 Pacific/Guam: first-named or
#   capital city of a multi-city label.
# * 52 "E. Europe" is Windows' "E. Europe Standard Time" = Europe/Chisinau.
# * 53 Africa/Johannesburg, 101 Asia/Srednekolymsk (Chokurdakh's zone),
#   103 Asia/Kamchatka, 102 Pacific/Guadalcanal follow the Windows mapping.
# * 59 is labelled "(UTC+02:00) Baghdad" by the firmware, but Baghdad is +03;
#   Asia/Baghdad is kept and the slot counts as unstable.
# * Places whose rules changed after ~2015 keep their real zone (e.g. 20
#   America/Caracas is -04:00 now, the label says -04:30; 80 Asia/Novosibirsk
#   is +07 now, the label says +06 "RTZ 5"); :func:`is_stable` flags them.
TIMEZONES: tuple[TimeZone, ...] = (
    TimeZone(0, "Etc/GMT+12", "(UTC-12:00) International Date Line West"),
    TimeZone(1, "Etc/GMT+11", "(UTC-11:00) Coordinated Universal Time"),
    TimeZone(2, "Pacific/Honolulu", "(UTC-10:00) Hawaii"),
    TimeZone(3, "America/Anchorage", "(UTC-09:00) Alaska"),
    TimeZone(4, "America/Tijuana", "(UTC-08:00) Baja California"),
    TimeZone(5, "Etc/GMT+8", "(UTC-08:00) Pacific Standard Time"),
    TimeZone(6, "America/Los_Angeles", "(UTC-08:00) Pacific Daylight Time"),
    TimeZone(7, "America/Phoenix", "(UTC-07:00) Arizona"),
    TimeZone(8, "America/Mazatlan", "(UTC-07:00) Chihuahua, La Paz, Mazatlan"),
    TimeZone(9, "Etc/GMT+7", "(UTC-07:00) Mountain Standard Time"),
    TimeZone(10, "America/Denver", "(UTC-07:00) Mountain Daylight Time"),
    TimeZone(11, "America/Guatemala", "(UTC-06:00) Central America"),
    TimeZone(12, "Etc/GMT+6", "(UTC-06:00) Central Standard Time"),
    TimeZone(13, "America/Chicago", "(UTC-06:00) Central Daylight Time"),
    TimeZone(14, "America/Mexico_City", "(UTC-06:00) Guadalajara, Mexico City"),
    TimeZone(15, "America/Regina", "(UTC-06:00) Saskatchewan"),
    TimeZone(16, "America/Bogota", "(UTC-05:00) Bogota, Lima, Quito"),
    TimeZone(17, "Etc/GMT+5", "(UTC-05:00) Eastern Standard Time"),
    TimeZone(18, "America/New_York", "(UTC-05:00) Eastern Daylight Time"),
    TimeZone(19, "America/Indiana/Indianapolis", "(UTC-05:00) Indiana (East)"),
    TimeZone(20, "America/Caracas", "(UTC-04:30) Caracas"),
    TimeZone(21, "America/Asuncion", "(UTC-04:00) Asuncion"),
    TimeZone(22, "Etc/GMT+4", "(UTC-04:00) Atlantic Standard Time"),
    TimeZone(23, "America/Halifax", "(UTC-04:00) Atlantic Daylight Time"),
    TimeZone(24, "America/Cuiaba", "(UTC-04:00) Cuiaba"),
    TimeZone(25, "America/Guyana", "(UTC-04:00) Georgetown"),
    TimeZone(26, "America/Santiago", "(UTC-04:00) Santiago"),
    TimeZone(27, "America/St_Johns", "(UTC-03:30) Newfoundland"),
    TimeZone(28, "America/Sao_Paulo", "(UTC-03:00) Brasilia"),
    TimeZone(29, "America/Argentina/Buenos_Aires", "(UTC-03:00) Buenos Aires"),
    TimeZone(30, "America/Cayenne", "(UTC-03:00) Cayenne, Fortaleza"),
    TimeZone(31, "America/Nuuk", "(UTC-03:00) Greenland"),
    TimeZone(32, "America/Montevideo", "(UTC-03:00) Montevideo"),
    TimeZone(33, "America/Bahia", "(UTC-03:00) Salvador"),
    TimeZone(34, "Etc/GMT+2", "(UTC-02:00) Coordinated Universal Time"),
    TimeZone(35, "Atlantic/Azores", "(UTC-01:00) Azores"),
    TimeZone(36, "Atlantic/Cape_Verde", "(UTC-01:00) Cabo Verde Is."),
    TimeZone(37, "Africa/Casablanca", "(UTC) Casablanca"),
    TimeZone(38, "UTC", "(UTC) Coordinated Universal Time"),
    TimeZone(39, "Europe/London", "(UTC) Dublin, Edinburgh, Lisbon, London"),
    TimeZone(40, "Atlantic/Reykjavik", "(UTC) Monrovia, Reykjavik"),
    TimeZone(41, "Europe/Berlin", "(UTC+01:00) Amsterdam, Berlin, Bern"),
    TimeZone(42, "Europe/Belgrade", "(UTC+01:00) Belgrade, Bratislava"),
    TimeZone(43, "Europe/Brussels", "(UTC+01:00) Brussels, Copenhagen"),
    TimeZone(44, "Europe/Warsaw", "(UTC+01:00) Sarajevo, Skopje, Warsaw"),
    TimeZone(45, "Africa/Lagos", "(UTC+01:00) West Central Africa"),
    TimeZone(46, "Africa/Windhoek", "(UTC+01:00) Windhoek"),
    TimeZone(47, "Asia/Amman", "(UTC+02:00) Amman"),
    TimeZone(48, "Europe/Athens", "(UTC+02:00) Athens, Bucharest"),
    TimeZone(49, "Asia/Beirut", "(UTC+02:00) Beirut"),
    TimeZone(50, "Africa/Cairo", "(UTC+02:00) Cairo"),
    TimeZone(51, "Asia/Damascus", "(UTC+02:00) Damascus"),
    TimeZone(52, "Europe/Chisinau", "(UTC+02:00) E. Europe"),
    TimeZone(53, "Africa/Johannesburg", "(UTC+02:00) Harare, Pretoria"),
    TimeZone(54, "Europe/Helsinki", "(UTC+02:00) Helsinki, Kyiv, Riga, Sofia"),
    TimeZone(55, "Europe/Istanbul", "(UTC+02:00) Istanbul"),
    TimeZone(56, "Asia/Jerusalem", "(UTC+02:00) Jerusalem"),
    TimeZone(57, "Europe/Kaliningrad", "(UTC+02:00) Kaliningrad (RTZ 1)"),
    TimeZone(58, "Africa/Tripoli", "(UTC+02:00) Tripoli"),
    TimeZone(59, "Asia/Baghdad", "(UTC+02:00) Baghdad"),
    TimeZone(60, "Asia/Riyadh", "(UTC+03:00) Kuwait, Riyadh"),
    TimeZone(61, "Europe/Minsk", "(UTC+03:00) Minsk"),
    TimeZone(62, "Europe/Moscow", "(UTC+03:00) Moscow, St. Petersburg"),
    TimeZone(63, "Africa/Nairobi", "(UTC+03:00) Nairobi"),
    TimeZone(64, "Asia/Tehran", "(UTC+03:30) Tehran"),
    TimeZone(65, "Asia/Dubai", "(UTC+04:00) Abu Dhabi, Muscat"),
    TimeZone(66, "Asia/Baku", "(UTC+04:00) Baku"),
    TimeZone(67, "Europe/Samara", "(UTC+04:00) Izhevsk, Samara (RTZ 3)"),
    TimeZone(68, "Indian/Mauritius", "(UTC+04:00) Port Louis"),
    TimeZone(69, "Asia/Tbilisi", "(UTC+04:00) Tbilisi"),
    TimeZone(70, "Asia/Yerevan", "(UTC+04:00) Yerevan"),
    TimeZone(71, "Asia/Kabul", "(UTC+04:30) Kabul"),
    TimeZone(72, "Asia/Tashkent", "(UTC+05:00) Ashgabat, Tashkent"),
    TimeZone(73, "Asia/Yekaterinburg", "(UTC+05:00) Ekaterinburg (RTZ 4)"),
    TimeZone(74, "Asia/Karachi", "(UTC+05:00) Islamabad, Karachi"),
    TimeZone(75, "Asia/Kolkata", "(UTC+05:30) Chennai, Kolkata, Mumbai"),
    TimeZone(76, "Asia/Colombo", "(UTC+05:30) Sri Jayawardenepura"),
    TimeZone(77, "Asia/Kathmandu", "(UTC+05:45) Kathmandu"),
    TimeZone(78, "Asia/Almaty", "(UTC+06:00) Astana"),
    TimeZone(79, "Asia/Dhaka", "(UTC+06:00) Dhaka"),
    TimeZone(80, "Asia/Novosibirsk", "(UTC+06:00) Novosibirsk (RTZ 5)"),
    TimeZone(81, "Asia/Yangon", "(UTC+06:30) Yangon (Rangoon)"),
    TimeZone(82, "Asia/Bangkok", "(UTC+07:00) Bangkok, Hanoi, Jakarta"),
    TimeZone(83, "Asia/Krasnoyarsk", "(UTC+07:00) Krasnoyarsk (RTZ 6)"),
    TimeZone(84, "Asia/Shanghai", "(UTC+08:00) Beijing, Chongqing, Hong Kong"),
    TimeZone(85, "Asia/Irkutsk", "(UTC+08:00) Irkutsk (RTZ 7)"),
    TimeZone(86, "Asia/Singapore", "(UTC+08:00) Kuala Lumpur, Singapore"),
    TimeZone(87, "Australia/Perth", "(UTC+08:00) Perth"),
    TimeZone(88, "Asia/Taipei", "(UTC+08:00) Taipei"),
    TimeZone(89, "Asia/Ulaanbaatar", "(UTC+08:00) Ulaanbaatar"),
    TimeZone(90, "Asia/Tokyo", "(UTC+09:00) Osaka, Sapporo, Tokyo"),
    TimeZone(91, "Asia/Seoul", "(UTC+09:00) Seoul"),
    TimeZone(92, "Asia/Yakutsk", "(UTC+09:00) Yakutsk (RTZ 8)"),
    TimeZone(93, "Australia/Adelaide", "(UTC+09:30) Adelaide"),
    TimeZone(94, "Australia/Darwin", "(UTC+09:30) Darwin"),
    TimeZone(95, "Australia/Brisbane", "(UTC+10:00) Brisbane"),
    TimeZone(96, "Australia/Sydney", "(UTC+10:00) Canberra, Melbourne, Sydney"),
    TimeZone(97, "Pacific/Guam", "(UTC+10:00) Guam, Port Moresby"),
    TimeZone(98, "Australia/Hobart", "(UTC+10:00) Hobart"),
    TimeZone(99, "Asia/Magadan", "(UTC+10:00) Magadan"),
    TimeZone(100, "Asia/Vladivostok", "(UTC+10:00) Vladivostok, Magadan (RTZ 9)"),
    TimeZone(101, "Asia/Srednekolymsk", "(UTC+11:00) Chokurdakh (RTZ 10)"),
    TimeZone(102, "Pacific/Guadalcanal", "(UTC+11:00) Solomon Is., New Caledonia"),
    TimeZone(103, "Asia/Kamchatka", "(UTC+12:00) Anadyr, Petropavlovsk"),
    TimeZone(104, "Pacific/Auckland", "(UTC+12:00) Auckland, Wellington"),
    TimeZone(105, "Etc/GMT-12", "(UTC+12:00) Coordinated Universal Time"),
    TimeZone(106, "Pacific/Fiji", "(UTC+12:00) Fiji"),
    TimeZone(107, "Pacific/Tongatapu", "(UTC+13:00) Nuku'alofa"),
    TimeZone(108, "Pacific/Apia", "(UTC+13:00) Samoa"),
    TimeZone(109, "Pacific/Kiritimati", "(UTC+14:00) Kiritimati Island"),
)

# Slots labelled by a zone rather than by places.  When several slots behave
# identically these win, because "Eastern Daylight Time" is what a US user
# expects to see rather than "Indiana (East)", and 38 rather than "Monrovia".
_GENERIC = frozenset({0, 1, 5, 6, 9, 10, 12, 13, 17, 18, 22, 23, 34, 38, 105})

# Names that are UTC by definition; answered without loading tzdata.
_UTC_ALIASES = frozenset(
    {
        "UTC",
        "UCT",
        "GMT",
        "GMT0",
        "GMT+0",
        "GMT-0",
        "Greenwich",
        "Universal",
        "Zulu",
        "Etc/UTC",
        "Etc/UCT",
        "Etc/GMT",
        "Etc/GMT0",
        "Etc/GMT+0",
        "Etc/GMT-0",
        "Etc/Greenwich",
        "Etc/Universal",
        "Etc/Zulu",
    }
)

# The firmware table matches the Windows zone list of 2015 (it still has
# Caracas at -04:30 and the short-lived "RTZ n" labels), so 2015 is the year
# whose rules we assume the firmware implements.
_FIRMWARE_RULES_YEAR = 2015
# Sampling 1st and 15th of each month at 12:00 UTC over two years: coarse
# enough to be cheap, fine enough to tell DST regimes apart.
_SAMPLE_MONTHS = 24
_SAMPLE_DAYS = (1, 15)
# Zones whose DST switches on different days still behave "nearly" the same;
# allow one differing sample per switch (two switches a year).
_NEAR_MISMATCHES = 2 * _SAMPLE_MONTHS // 12

_HOST_TZ_ENV = "TZ"
_LOCALTIME = "/etc/localtime"
_TIMEZONE_FILE = "/etc/timezone"

_stable_cache: dict[int, bool] = {}


def zone(index: int) -> TimeZone:
    """Return the table entry for a firmware index.

    Raises ValueError rather than IndexError because the index usually comes
    from a user or a device, and negative indices must not wrap around.
    """
    if isinstance(index, bool) or not isinstance(index, int):
        raise ValueError(f"time zone index must be an int, got {index!r}")
    if not 0 <= index < len(TIMEZONES):
        raise ValueError(
            f"time zone index {index} out of range: the firmware knows 0..{len(TIMEZONES) - 1}"
        )
    return TIMEZONES[index]


def zoneinfo_for(index: int) -> datetime.tzinfo:
    """Return a tzinfo for a firmware index, to convert plug times on the host.

    For slots where :func:`is_stable` is False this follows today's rules for
    the place, which may differ from what the plug's firmware applies.
    """
    import zoneinfo

    return zoneinfo.ZoneInfo(zone(index).iana)


def host_now(index: int) -> datetime.datetime:
    """This host's wall time in plug zone ``index`` (naive): what a plug in that zone
    should read now."""
    from datetime import datetime

    return datetime.now(zoneinfo_for(index)).replace(tzinfo=None)


def wall_time_problem(index: int, local: datetime.datetime) -> str | None:
    """Why the naive wall time ``local`` in zone ``index`` cannot be sent to a plug:
    it does not exist (the hour the clocks go forward) or it happens twice (the hour
    they go back) — a plug takes wall time, so it would pick one of the two, or a time
    that never was. None when it is one instant."""
    from datetime import timezone

    tz = zoneinfo_for(index)
    first, second = local.replace(tzinfo=tz, fold=0), local.replace(tzinfo=tz, fold=1)
    if first.utcoffset() == second.utcoffset():
        return None
    back = first.astimezone(timezone.utc).astimezone(tz).replace(tzinfo=None)
    if back != local:
        return (f"{local:%Y-%m-%d %H:%M:%S} does not exist in zone {index} (the clocks go "
                f"forward then)")
    return (f"{local:%Y-%m-%d %H:%M:%S} happens twice in zone {index} (the clocks go back "
            f"then), so the plug could take either")


def _load(name: str) -> datetime.tzinfo:
    """Load an IANA zone, turning every lookup failure into ValueError."""
    import zoneinfo

    try:
        return zoneinfo.ZoneInfo(name)
    except (ValueError, zoneinfo.ZoneInfoNotFoundError, OSError) as exc:
        raise ValueError(f"unknown time zone {name!r}") from exc


def _window() -> list[datetime.datetime]:
    """Sample instants (UTC) covering the next two years, from this month on."""
    from datetime import datetime, timezone

    now = datetime.now(timezone.utc)
    out = []
    for step in range(_SAMPLE_MONTHS):
        year, month0 = divmod(now.month - 1 + step, 12)
        for day in _SAMPLE_DAYS:
            out.append(datetime(now.year + year, month0 + 1, day, 12, tzinfo=timezone.utc))
    return out


def _profile(tz: datetime.tzinfo, instants: list[datetime.datetime]) -> tuple[int, ...]:
    """UTC offsets (seconds) of ``tz`` at each instant: the zone's behaviour."""
    out = []
    for instant in instants:
        offset = instant.astimezone(tz).utcoffset()
        out.append(int(offset.total_seconds()) if offset is not None else 0)
    return tuple(out)


def _mismatches(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    """Count sample instants where two behaviours disagree (0 = same rules)."""
    return sum(x != y for x, y in zip(a, b, strict=True))


def is_stable(index: int) -> bool:
    """Whether the firmware slot and its IANA zone still behave the same.

    True when the zone's standard offset equals the offset in the firmware's
    label and the zone's rules over the next two years match its 2015 rules
    (within a DST-switch-day of slack).  A stable slot does the right thing on
    the plug whatever vintage of rules the firmware carries; an unstable one
    (Caracas, Istanbul, Mexico City, Tehran, ...) probably applies outdated
    offsets or DST, so :func:`index_for_zone` avoids it when it can.
    """
    entry = zone(index)
    cached = _stable_cache.get(index)
    if cached is not None:
        return cached
    tz = _load(entry.iana)
    window = _window()
    now = _profile(tz, window)
    then = _profile(tz, [t.replace(year=_FIRMWARE_RULES_YEAR) for t in window])
    # Positive DST means the smallest offset seen is the standard one.
    stable = min(now) == entry.offset_minutes * 60 and _mismatches(now, then) <= _NEAR_MISMATCHES
    _stable_cache[index] = stable
    return stable


def index_for_zone(name: str) -> int:
    """Pick the firmware index that makes a plug keep the same time as ``name``.

    The plug can only be told an index, so a host zone must be mapped onto the
    slot that behaves like it.  Order of preference:

    1. a UTC alias, or the slot whose IANA name is ``name``, if that slot is
       stable (see :func:`is_stable`);
    2. a stable slot with the same UTC offsets at every sample instant over the
       next two years, then one differing at most once per DST switch (DST
       switching on different days); ties go to a slot whose label names the
       city (Europe/Kyiv -> "Helsinki, Kyiv, ..."), then to zone-labelled slots
       such as "Eastern Daylight Time", then to the lowest index;
    3. the unstable slot named ``name`` (no better option: the plug may be off);
    4. an unstable slot that behaves the same, ranked as in 2.

    Raises ValueError naming the zone if it is unknown or nothing matches
    (e.g. Pacific/Chatham, UTC+12:45, has no slot).
    """
    if name in _UTC_ALIASES:
        return 38
    named = next((tz.index for tz in TIMEZONES if tz.iana == name), None)
    if named is not None and is_stable(named):
        return named
    window = _window()
    target = _profile(_load(name), window)

    # "Europe/Kyiv" -> "Kyiv": a slot whose label names the city wins a tie.
    city = name.rsplit("/", 1)[-1].replace("_", " ")
    candidates: list[tuple[int, bool, bool, int]] = []
    for entry in TIMEZONES:
        misses = _mismatches(target, _profile(_load(entry.iana), window))
        if misses <= _NEAR_MISMATCHES:
            places = entry.description.split(") ", 1)[-1]
            candidates.append(
                (misses, city not in places, entry.index not in _GENERIC, entry.index)
            )
    stable = sorted(c for c in candidates if is_stable(c[3]))
    if stable:
        return stable[0][3]
    if named is not None:
        return named
    if candidates:
        return min(candidates)[3]
    raise ValueError(f"time zone {name!r} has no equivalent among the plug's firmware zones")


def _zone_from_path(path: str) -> str | None:
    """Extract "Area/City" from a tzdata file path, if it is one."""
    marker = "zoneinfo/"
    pos = path.rfind(marker)
    if pos < 0:
        return None
    name = path[pos + len(marker) :]
    # posix/ and right/ are alternate trees of the same zones.
    for prefix in ("posix/", "right/"):
        if name.startswith(prefix):
            name = name[len(prefix) :]
    return name or None


def _valid_zone(name: str | None) -> str | None:
    """Return ``name`` if it loads as an IANA zone, else None."""
    if not name:
        return None
    try:
        _load(name)
    except ValueError:
        return None
    return name


def host_zone_name() -> str | None:
    """Return the host's IANA zone name, or None if it cannot be determined.

    A plug needs to be told an index, and the host only exposes its zone
    indirectly; check, in the order the C library does, ``$TZ`` (if it names
    a zone, optionally ``:``-prefixed or as a tzdata path), the
    ``/etc/localtime`` symlink target, then Debian's ``/etc/timezone``.
    """
    import os

    tz = os.environ.get(_HOST_TZ_ENV)
    if tz:
        tz = tz.removeprefix(":")
        name = _zone_from_path(tz) if tz.startswith("/") else tz
        found = _valid_zone(name)
        if found:
            return found

    try:
        target = os.readlink(_LOCALTIME)
    except OSError:
        target = None
    if target is not None:
        found = _valid_zone(_zone_from_path(target)) or _valid_zone(
            _zone_from_path(os.path.realpath(_LOCALTIME))
        )
        if found:
            return found

    try:
        with open(_TIMEZONE_FILE, encoding="utf-8") as fh:
            content = fh.read().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return _valid_zone(content.splitlines()[0].strip() if content else None)


def host_index(default: int = 38) -> int:
    """Firmware index matching the host's zone, for ``hs100local time sync``.

    Falls back to ``default`` (UTC) when the host zone is unknown or has no
    equivalent slot, because a plug with a wrong-but-defined zone is still
    better than a failed sync.
    """
    name = host_zone_name()
    if name is None:
        return default
    try:
        return index_for_zone(name)
    except ValueError:
        return default
