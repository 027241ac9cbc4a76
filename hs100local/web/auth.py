"""Who may use the dashboard, and which POSTs really come from its own page.

The dashboard switches plugs, so it guards three doors:

* **Authentication.** On loopback with nothing configured it is open (like a
  local CLI). With a ``token``, a script sends ``Authorization: Bearer TOKEN``
  and a browser logs in once with a form and gets an HttpOnly, SameSite=Strict
  cookie derived from the token (changing the token logs everyone out). With
  ``user``/``password`` it is HTTP basic auth. Secrets are never taken from a URL
  (a query string ends up in logs, history and Referer headers).
* **CSRF.** Every state-changing request needs the page's CSRF token (header
  ``X-CSRF-Token`` or form field ``csrf``), except one carrying an explicit
  bearer token: browsers attach cookies and cached basic credentials to
  cross-site requests by themselves, but never a bearer header. An ``Origin``
  or ``Sec-Fetch-Site`` header saying "another site" is refused as well
  (``Origin: null``, which browsers send for a form on a no-referrer page such
  as ours, proves nothing either way: the token decides).
* **DNS rebinding.** An open (loopback, no auth) dashboard answers only
  requests whose ``Host`` is a loopback name or address, so a web page whose
  name was re-pointed at 127.0.0.1 cannot read the CSRF token from it.

Wrong credentials (a login, a bearer token, basic auth) are rate limited per
client address: after ten in a minute, that address gets 429 until it has waited;
a valid session cookie or bearer token still gets in, so a stranger cannot lock
the owner out (behind a proxy all clients share one address). Basic auth is the
exception: its password is what is being guessed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os
import time
from dataclasses import dataclass
from urllib.parse import parse_qs

from hs100local.config import WebConfig
from hs100local.web.http import Request

COOKIE = "hs100local_session"
CSRF_HEADER = "x-csrf-token"
#: a login cookie lives this long (seconds); the token itself does not expire
COOKIE_MAX_AGE = 30 * 86400
#: failed logins allowed per client address within LOCKOUT_WINDOW seconds
MAX_FAILURES, LOCKOUT_WINDOW = 10, 60.0
#: headers a reverse proxy adds: an open (no auth) dashboard refuses such requests
PROXY_HEADERS = ("forwarded", "x-forwarded-for", "x-forwarded-host", "x-real-ip", "via")


@dataclass(frozen=True)
class Who:
    """How a request was let in: "open" (loopback, no auth configured), "bearer",
    "cookie" or "basic"."""

    how: str

    @property
    def ambient(self) -> bool:
        """Credentials a browser sends by itself (so CSRF applies)."""
        return self.how != "bearer"


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8", "surrogateescape"),
                               b.encode("utf-8", "surrogateescape"))


def _host_name(host_header: str) -> str:
    """The host part of a Host header: ``[::1]:8099`` -> ``::1``, ``a:80`` -> ``a``."""
    if host_header.startswith("["):
        return host_header[1:].split("]", 1)[0]
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


def is_loopback_host(host_header: str) -> bool:
    name = _host_name(host_header.strip()).lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class Access:
    """The dashboard's gatekeeper; ``secret`` keys the CSRF token (random per process,
    so a page loaded before a restart asks to be reloaded)."""

    def __init__(self, web: WebConfig, *, secret: bytes | None = None) -> None:
        self.web = web
        self._secret = secret or os.urandom(32)
        self._failures: dict[str, list[float]] = {}

    @property
    def mode(self) -> str:
        return self.web.auth

    # ---------------------------------------------------------------- tokens

    @property
    def csrf_token(self) -> str:
        return hmac.new(self._secret, b"hs100local csrf", hashlib.sha256).hexdigest()

    def _session_mac(self, issued: int) -> str:
        assert self.web.token is not None
        return hmac.new(self.web.token.encode(), f"hs100local session {issued}".encode(),
                        hashlib.sha256).hexdigest()

    def session_value(self, now: float | None = None) -> str:
        """The login cookie: when it was issued and a MAC over that keyed by the token,
        so the server itself ends it after COOKIE_MAX_AGE and a new token ends all."""
        issued = int(time.time() if now is None else now)
        return f"{issued}.{self._session_mac(issued)}"

    def session_ok(self, value: str, now: float | None = None) -> bool:
        issued_text, _, mac = value.partition(".")
        if not issued_text.isascii() or not issued_text.isdigit() or len(issued_text) > 12:
            return False
        issued = int(issued_text)
        age = (time.time() if now is None else now) - issued
        return -300 <= age <= COOKIE_MAX_AGE and _same(mac, self._session_mac(issued))

    def session_cookie(self) -> str:
        return (f"{COOKIE}={self.session_value()}; Path=/; HttpOnly; SameSite=Strict; "
                f"Max-Age={COOKIE_MAX_AGE}")

    @staticmethod
    def logout_cookie() -> str:
        return f"{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"

    # -------------------------------------------------------------- checks

    def host_allowed(self, request: Request) -> bool:
        """An open dashboard serves loopback Host names only (DNS rebinding), and
        nothing that came through a proxy: behind one, every client looks local."""
        if self.mode != "none":
            return True
        if any(request.header(h) is not None for h in PROXY_HEADERS):
            return False
        return is_loopback_host(request.header("host", "") or "")

    def identify(self, request: Request) -> Who | None:
        """How the request is authenticated, or None when it is not."""
        if self.mode == "none":
            return Who("open")
        scheme, _, value = (request.header("authorization", "") or "").strip().partition(" ")
        scheme, value = scheme.lower(), value.strip()
        if self.mode == "token":
            assert self.web.token is not None
            if scheme == "bearer" and _same(value, self.web.token):
                return Who("bearer")
            # every cookie of our name: another service on this host may have set one
            if any(self.session_ok(v) for v in _cookie_values(request, COOKIE)):
                return Who("cookie")
            return None
        if scheme == "basic" and self._basic_ok(value):
            return Who("basic")
        return None

    def _basic_ok(self, value: str) -> bool:
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return False
        user, sep, password = decoded.partition(":")
        assert self.web.user is not None and self.web.password is not None
        # both compared, always: the time taken does not tell which one was wrong
        right_user = _same(user, self.web.user)
        right_password = _same(password, self.web.password)
        return bool(sep) and right_user and right_password

    def same_site(self, request: Request) -> bool:
        """False when the browser says the request comes from another site."""
        site = (request.header("sec-fetch-site", "") or "").lower()
        if site and site not in ("same-origin", "none"):
            return False
        origin = request.header("origin")
        # "null": a form posted from a page sent with Referrer-Policy no-referrer (ours)
        return origin in (None, "null") or self._same_origin(origin, request)

    def csrf_ok(self, request: Request, who: Who, form: dict[str, list[str]] | None) -> bool:
        """A state-changing request from our own page (or a bearer-token script)."""
        if not self.same_site(request):
            return False
        if not who.ambient:
            return True
        given = request.header(CSRF_HEADER)
        if given is None and form is not None:
            given = (form.get("csrf") or [None])[0]
        return given is not None and _same(given, self.csrf_token)

    @staticmethod
    def _same_origin(origin: str, request: Request) -> bool:
        host = request.header("host", "") or ""
        return origin.lower() in (f"http://{host}".lower(), f"https://{host}".lower())

    def login(self, request: Request, token: str | None) -> bool:
        """Check a token typed into the login form; failures are rate limited."""
        if self.mode != "token" or token is None:
            return False
        assert self.web.token is not None
        if _same(token, self.web.token):
            return True
        self.failed(request)
        return False

    def failed(self, request: Request) -> None:
        """Count wrong credentials from the request's address (see :meth:`locked_out`)."""
        if len(self._failures) > 10_000:  # many addresses failing: forget, stay bounded
            self._failures.clear()
        self._failures.setdefault(request.client[0], []).append(time.monotonic())

    def locked_out(self, request: Request) -> bool:
        """Too many failed logins from this address lately (checked before trying)."""
        recent = [t for t in self._failures.get(request.client[0], [])
                  if t > time.monotonic() - LOCKOUT_WINDOW]
        if recent:
            self._failures[request.client[0]] = recent[-MAX_FAILURES:]
        else:
            self._failures.pop(request.client[0], None)
        return len(recent) >= MAX_FAILURES


def _cookie_values(request: Request, name: str) -> list[str]:
    values = []
    for part in (request.header("cookie") or "").split(";"):
        key, sep, value = part.partition("=")
        if sep and key.strip() == name:
            values.append(value.strip().strip('"'))
    return values


def parse_form(request: Request) -> dict[str, list[str]]:
    """An ``application/x-www-form-urlencoded`` body (empty for other types)."""
    kind = (request.header("content-type", "") or "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        return {}
    try:
        return parse_qs(request.body.decode("utf-8"), keep_blank_values=True,
                        max_num_fields=50)
    except (UnicodeDecodeError, ValueError):
        return {}

