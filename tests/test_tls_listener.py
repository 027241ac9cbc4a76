"""The cloud listener and its certificate: real TLS clients (``openssl s_client``,
Python's ssl with a CA pinned as a plug pins TP-Link's), every outcome, the modes,
bad and slow peers, and the limits (1,000 idle connections, capacity, rate).

Everything runs on 127.0.0.1 with ports the kernel picks.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import random
import resource
import shutil
import socket
import ssl
import stat
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import prockit
import pytest
import trustme
from servicekit import LoopThread
from tlskit import (
    BioClient,
    TimedSink,
    WaitingSink,
    capture_hello,
    connect,
    connect_and_read,
    hello_bytes,
    insecure_context,
    pinned_context,
    read_to_end,
    s_client,
)

from hs100local.events import EventStore
from hs100local.ratelimit import RateLimiter
from hs100local.tls import cert as tls_cert
from hs100local.tls import listener as listener_module
from hs100local.tls.cert import ensure_certificate
from hs100local.tls.hello import parse_client_hello
from hs100local.tls.listener import CloudListener

CLOUD = "n-devs.tplinkcloud.com"
PLUG_LIKE = ("-tls1", "-cipher", "AES128-SHA@SECLEVEL=0")  # TLS 1.0, no SNI, old suite
TLS10 = {"minimum_version": ssl.TLSVersion.TLSv1, "maximum_version": ssl.TLSVersion.TLSv1}
HELLO_FIELDS = ("sni", "alpn", "version", "record_version", "client_version",
                "supported_versions", "ciphers", "ja3", "ja3_hash", "ja4")

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None,
                                reason="openssl (Debian openssl) missing")


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    return ensure_certificate(tmp_path_factory.mktemp("cert"))


@pytest.fixture(scope="module")
def other_ca() -> trustme.CA:
    """A CA that did not sign our certificate: what a plug trusts, as far as we go."""
    return trustme.CA(key_type=trustme.KeyType.RSA)


Start = Callable[..., tuple[LoopThread, WaitingSink]]


@pytest.fixture
def start(certificate) -> Iterator[Start]:
    """Factory: ``start(mode=..., ...)`` -> (running listener, its sink)."""
    running: list[LoopThread] = []

    def start(**kw) -> tuple[LoopThread, WaitingSink]:
        sink = kw.pop("events", None) or WaitingSink()
        kw.setdefault("certificate", certificate)
        kw.setdefault("limiter", RateLimiter(0))
        loop_thread = LoopThread(CloudListener([("127.0.0.1", 0)], events=sink, **kw))
        running.append(loop_thread)
        return loop_thread, sink

    yield start
    for loop_thread in running:
        if not loop_thread.loop.is_closed():
            loop_thread.close()


def stats(loop_thread: LoopThread):
    return loop_thread.call(lambda: loop_thread.server.stats)


# ------------------------------------------------------------- certificate


def test_the_certificate_is_made_once_for_the_cloud_names(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import rsa

    cert_path, key_path = ensure_certificate(tmp_path / "tls")
    assert (cert_path.name, key_path.name) == ("cloud-cert.pem", "cloud-key.pem")
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "tls").stat().st_mode) == 0o700
    assert sorted(p.name for p in (tmp_path / "tls").iterdir()) == [
        "cloud-cert.pem", "cloud-key.pem"]  # no temporary file left behind
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    assert cert.subject.rfc4514_string() == "CN=n-devs.tplinkcloud.com"
    assert cert.issuer == cert.subject
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) >= {
        "*.tplinkcloud.com", "tplinkcloud.com", "*.tplinkra.com", CLOUD}
    key = cert.public_key()
    assert isinstance(key, rsa.RSAPublicKey) and key.key_size == 2048
    now = datetime.datetime.now(datetime.timezone.utc)
    assert cert.not_valid_before_utc.year == 2000  # a plug without time still "accepts" it
    assert cert.not_valid_after_utc - now > datetime.timedelta(days=3650)
    assert cert.serial_number > 1 << 64  # random, not 1

    before = (cert_path.read_bytes(), key_path.read_bytes(), cert_path.stat().st_mtime_ns)
    assert ensure_certificate(tmp_path / "tls") == (cert_path, key_path)
    assert (cert_path.read_bytes(), key_path.read_bytes(),
            cert_path.stat().st_mtime_ns) == before  # reused, not rewritten

    other, _ = ensure_certificate(tmp_path / "other")
    assert x509.load_pem_x509_certificate(other.read_bytes()).serial_number != cert.serial_number


def _expired_pair(key_pem: bytes) -> bytes:
    """A certificate for ``key_pem`` that expired yesterday."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    key = serialization.load_pem_private_key(key_pem, password=None)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CLOUD)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=30))
            .not_valid_after(now - datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize("damage, reason", [
    (lambda c, k: c.write_text("garbage"), "is not a PEM certificate"),
    (lambda c, k: k.write_bytes(k.read_bytes()[:200]), "is not an unencrypted PEM private key"),
    (lambda c, k: k.unlink(), "cannot read it"),
    (lambda c, k: c.write_bytes(tls_cert.generate()[0]), "the key does not belong"),
    (lambda c, k: c.write_bytes(_expired_pair(k.read_bytes())), "it expired on"),
])
def test_a_broken_pair_is_replaced_and_the_reason_logged(tmp_path, caplog, damage, reason):
    from cryptography import x509

    cert_path, key_path = ensure_certificate(tmp_path)
    old = x509.load_pem_x509_certificate(cert_path.read_bytes()).serial_number
    damage(cert_path, key_path)
    caplog.clear()
    with caplog.at_level("WARNING", logger="hs100local.tls"):
        assert ensure_certificate(tmp_path) == (cert_path, key_path)
    assert reason in caplog.text
    assert "replacing the cloud listener's certificate" in caplog.text
    new = x509.load_pem_x509_certificate(cert_path.read_bytes())
    assert new.serial_number != old
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)  # a usable pair again
    caplog.clear()
    with caplog.at_level("INFO", logger="hs100local.tls"):
        ensure_certificate(tmp_path)
    assert caplog.text == ""  # and kept from now on


def _pair_until(key_pem: bytes, until: datetime.datetime) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    key = serialization.load_pem_private_key(key_pem, password=None)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CLOUD)])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc))
            .not_valid_after(until).sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize("until", [  # UTCTime before 2050, GeneralizedTime from 2050 on
    datetime.datetime(2049, 12, 31, 23, 59, 58, tzinfo=datetime.timezone.utc),
    datetime.datetime(2050, 1, 1, 0, 0, 1, tzinfo=datetime.timezone.utc),
    datetime.datetime(2999, 6, 7, 8, 9, 10, tzinfo=datetime.timezone.utc),
])
def test_the_expiry_is_read_from_the_der_as_cryptography_reads_it(tmp_path, until):
    from cryptography import x509

    _, key_path = ensure_certificate(tmp_path)
    pem = _pair_until(key_path.read_bytes(), until)
    der = ssl.PEM_cert_to_DER_cert(pem.decode())
    assert tls_cert.not_valid_after(der) == until
    assert x509.load_pem_x509_certificate(pem).not_valid_after_utc == until
    for broken in (der[:40], b"\x30\x84\xff\xff\xff\xff", b"", b"\x30\x03\x02\x01\x01"):
        with pytest.raises(ValueError):
            tls_cert.not_valid_after(broken)


def test_an_encrypted_key_is_replaced_without_asking_for_a_password(tmp_path, caplog):
    from cryptography.hazmat.primitives import serialization

    _, key_path = ensure_certificate(tmp_path)
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    with caplog.at_level("WARNING", logger="hs100local.tls"):
        ensure_certificate(tmp_path)
    assert "is not an unencrypted PEM private key" in caplog.text
    assert b"ENCRYPTED" not in key_path.read_bytes()


def test_making_or_reusing_the_certificate_does_not_load_cryptography(tmp_path):
    """The daemon would carry cryptography's extension for good (serve's RSS target):
    a new pair is made in a child interpreter, a reused one checked with ssl."""
    code = ("import sys; from pathlib import Path; "
            "from hs100local.tls.cert import ensure_certificate; "
            f"pair = ensure_certificate(Path({str(tmp_path)!r})); "
            f"again = ensure_certificate(Path({str(tmp_path)!r})); "
            "print(pair == again, 'cryptography' in sys.modules)")
    result = prockit.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert result.stdout.split() == ["True", "False"], result.stderr
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cloud-cert.pem", tmp_path / "cloud-key.pem")


def test_a_failing_child_is_one_clear_error(tmp_path, monkeypatch):
    from hs100local.errors import StoreError

    monkeypatch.setattr(sys, "executable", "/bin/false")
    with pytest.raises(StoreError, match="cannot create the cloud listener's certificate"):
        ensure_certificate(tmp_path / "tls")
    assert not (tmp_path / "tls" / "cloud-key.pem").exists()


def test_a_reused_key_readable_by_others_is_made_private(tmp_path, caplog):
    _, key_path = ensure_certificate(tmp_path)
    key_path.chmod(0o644)
    with caplog.at_level("WARNING", logger="hs100local.tls"):
        ensure_certificate(tmp_path)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert "readable by others" in caplog.text


def test_importing_the_tls_modules_does_not_load_cryptography():
    code = ("import sys, hs100local.tls.cert, hs100local.tls.listener; "
            "print('cryptography' in sys.modules)")
    result = prockit.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert result.stdout.strip() == "False"


# ------------------------------------------------------- real clients


def test_openssl_without_sni_completes_and_is_fingerprinted(start):
    listener, sink = start()
    result = s_client(listener.port, data=b"GET / HTTP/1.0\r\n\r\n")
    assert result.returncode == 0, result.stderr
    details = sink.wait_event()
    expected = capture_hello()  # the same command's hello, read by a bare TCP server
    assert details["sni"] is None
    assert details["ja3"] == expected.ja3_string() and details["ja4"] == expected.ja4()
    assert details["ja3_hash"] == expected.ja3_hash()
    assert details["ja4"].startswith("t13i")  # TLS 1.3, no SNI ("i": to an address)
    assert details["ja3"].startswith("771,")  # legacy version field: TLS 1.2
    assert (details["record_version"], details["client_version"], details["version"]) == (
        "TLS 1.0", "TLS 1.2", "TLS 1.3")
    assert details["ciphers"] == len(expected.cipher_suites) > 10
    assert details["local_port"] == listener.port
    assert (details["outcome"], details["tls_version"]) == ("completed", "TLSv1.3")
    assert details["app_data_len"] == 18 and details["app_data_end"] == "closed"
    assert bytes.fromhex(details["app_data_preview"]) == b"GET / HTTP/1.0\r\n\r\n"
    assert list(details)[-1] == "outcome"


def test_openssl_with_sni(start):
    listener, sink = start()
    result = s_client(listener.port, "-servername", CLOUD, "-alpn", "http/1.1")
    assert result.returncode == 0, result.stderr
    details = sink.wait_event()
    expected = capture_hello("-servername", CLOUD, "-alpn", "http/1.1")
    assert (details["sni"], details["alpn"]) == (CLOUD, ["http/1.1"])
    assert details["ja4"] == expected.ja4() and details["ja4"].startswith("t13d")
    assert details["ja4"][8:10] == "h1"
    assert details["ja3"] == expected.ja3_string()
    assert details["outcome"] == "completed"


def test_a_plug_like_hello_tls10_without_sni_with_an_old_suite(start):
    listener, sink = start()
    result = s_client(listener.port, *PLUG_LIKE)
    assert result.returncode == 0, result.stderr
    details = sink.wait_event()
    expected = capture_hello(*PLUG_LIKE)
    assert details["ja3"] == expected.ja3_string()
    assert details["ja3"].startswith("769,47-255,")  # TLS 1.0; AES128-SHA + SCSV
    assert details["ja4"].startswith("t10i02")
    assert details["sni"] is None and details["supported_versions"] == []
    assert (details["version"], details["ciphers"]) == ("TLS 1.0", 2)
    assert (details["outcome"], details["tls_version"], details["cipher"]) == (
        "completed", "TLSv1", "AES128-SHA")


@pytest.mark.parametrize("extra", [(), PLUG_LIKE], ids=["tls13", "plug-like"])
def test_openssl_that_verifies_against_another_ca_sends_unknown_ca(start, other_ca,
                                                                   tmp_path, extra):
    listener, sink = start()
    ca_file = tmp_path / "ca.pem"
    other_ca.cert_pem.write_to_path(str(ca_file))
    result = s_client(listener.port, "-verify_return_error", "-CAfile", str(ca_file), *extra)
    assert result.returncode != 0
    assert b"certificate verify failed" in result.stderr
    details = sink.wait_event()
    assert details["outcome"] == "unknown_ca"
    assert details["ja3"] == capture_hello(*extra).ja3_string()


@pytest.mark.parametrize("args, outcome", [
    (("-verify_hostname", "example.com"), "bad_certificate"),  # trusted, wrong name
    (("-attime", "4102444800"), "certificate_expired"),  # trusted, read in 2100
    (("-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"), "no_shared_cipher"),
])
def test_other_handshake_failures_are_named(start, certificate, args, outcome):
    listener, sink = start()
    s_client(listener.port, "-CAfile", str(certificate[0]), "-verify_return_error", *args)
    assert sink.wait_event()["outcome"] == outcome


@pytest.mark.parametrize("reason, outcome", [
    ("TLSV1_ALERT_UNKNOWN_CA", "unknown_ca"),
    ("SSLV3_ALERT_BAD_CERTIFICATE", "bad_certificate"),
    ("TLSV13_ALERT_CERTIFICATE_REQUIRED", "certificate_required"),
    ("TLSV1_UNRECOGNIZED_NAME", "unrecognized_name"),
    ("NO_SHARED_CIPHER", "no_shared_cipher"),
    ("WRONG_VERSION_NUMBER", "wrong_version"),
    ("UNSUPPORTED_PROTOCOL", "unsupported_protocol"),
    ("BLOCK_CIPHER_PAD_IS_WRONG", "tls_error"),
])
def test_openssl_reasons_get_short_outcome_names(reason, outcome):
    error = ssl.SSLError(1, "handshake failed")
    error.reason = reason
    details: dict = {}
    assert listener_module._ssl_outcome(error, details) == outcome
    assert details == ({"error": reason} if outcome == "tls_error" else {})
    assert listener_module._ssl_outcome(ssl.SSLEOFError(8, "EOF"), {}) == "closed"


@pytest.mark.parametrize("versions", [
    TLS10,
    {"maximum_version": ssl.TLSVersion.TLSv1_2},
    {"minimum_version": ssl.TLSVersion.TLSv1_3},
], ids=["tls10", "tls12", "tls13"])
def test_a_client_pinned_to_another_ca_aborts_with_unknown_ca(start, other_ca, versions):
    """A plug: its CA is not ours, so the handshake ends with its alert, recorded."""
    listener, sink = start()
    context = pinned_context(other_ca.cert_pem.bytes(), **versions)
    with connect(listener.port) as raw, pytest.raises(ssl.SSLCertVerificationError):
        context.wrap_socket(raw, server_hostname=CLOUD)
    details = sink.wait_event()
    assert (details["outcome"], details["sni"]) == ("unknown_ca", CLOUD)
    if versions is TLS10:
        assert details["client_version"] == details["version"] == "TLS 1.0"
    assert "tls_version" not in details and "app_data_len" not in details


def test_the_event_store_gets_the_hello_time_and_folds_identical_plugs(start, tmp_path,
                                                                       other_ca):
    with EventStore(tmp_path / "ev.db") as store:
        listener, _ = start(events=store)
        context = pinned_context(other_ca.cert_pem.bytes(), **TLS10)
        before = time.time()
        for _ in range(2):
            client = BioClient(context, server_hostname=CLOUD)
            with connect(listener.port) as sock:
                sock.sendall(client.hello)
                with pytest.raises(ssl.SSLCertVerificationError):
                    client.finish(sock)
                # the listener closes after recording: close() cannot overtake it
                assert read_to_end(sock) == b""
        after = time.time()
        listener.close()
        store.flush()
        got = store.events(kind="tls")
    assert sum(e.count for e in got) == 2  # one row, or two across a minute boundary
    assert all(e.details == got[0].details for e in got)  # nothing per-connection in it
    assert before <= got[0].at <= after and got[0].client == "127.0.0.1"
    assert got[0].details["outcome"] == "unknown_ca"
    assert got[0].details["ja4"].startswith("t10d")  # TLS 1.0, with SNI


def test_the_event_time_is_the_hellos_not_the_outcomes(start):
    """A client that sends its hello and then nothing: the outcome is known only at
    the handshake timeout, the event's ``at`` is still when the hello came."""
    listener, sink = start(events=TimedSink(), handshake_timeout=0.5)
    with connect(listener.port) as sock:
        sent = time.time()
        sock.sendall(hello_bytes(CLOUD))
        assert read_to_end(sock) not in (b"", "reset")  # our flight, then our close
    details = sink.wait_event()
    assert (details["outcome"], details["sni"]) == ("timeout", CLOUD)
    (at, recorded), = sink.times
    assert sent <= at < sent + 0.3
    assert recorded - at >= 0.45


# ------------------------------------------------------- application data


def test_a_completed_handshake_records_the_application_data(start):
    listener, sink = start()
    payload = bytes(range(256)) * 2
    with connect(listener.port) as raw, insecure_context().wrap_socket(raw) as tls:
        tls.sendall(payload)
    details = sink.wait_event()
    assert details["outcome"] == "completed"
    assert (details["app_data_len"], details["app_data_end"]) == (512, "closed")
    assert details["app_data_preview"] == payload[:64].hex()


def test_application_data_is_bounded_by_max_app_data(start):
    listener, sink = start(max_app_data=1000)
    with (connect(listener.port) as raw, insecure_context().wrap_socket(raw) as tls,
          contextlib.suppress(OSError)):  # we stop reading: the client may see a RST
        tls.sendall(os.urandom(50_000))
        tls.recv(1)
    details = sink.wait_event()
    assert (details["app_data_len"], details["app_data_end"]) == (1000, "limit")


def test_application_data_ends_at_the_app_data_timeout(start):
    listener, sink = start(app_data_timeout=0.5)
    with connect(listener.port) as raw, insecure_context().wrap_socket(raw) as tls:
        tls.sendall(b"0123456789")
        started = time.monotonic()
        with contextlib.suppress(OSError):
            assert tls.recv(1) == b""  # we close after the quiet 0.5 s
        waited = time.monotonic() - started
    details = sink.wait_event()
    assert (details["app_data_len"], details["app_data_end"]) == (10, "timeout")
    assert 0.4 <= waited < 5


# ------------------------------------------------------------------ modes


def test_mode_log_closes_after_the_hello_with_a_fin(start):
    listener, sink = start(mode="log", certificate=None)
    with connect(listener.port) as sock:
        sock.sendall(hello_bytes(CLOUD))
        assert read_to_end(sock) == b""  # orderly: the hello was read, not left unread
    details = sink.wait_event()
    assert (details["outcome"], details["sni"]) == ("logged", CLOUD)


def test_mode_reset_answers_the_hello_with_a_rst(start):
    listener, sink = start(mode="reset", certificate=None)
    with connect(listener.port) as sock:
        sock.sendall(hello_bytes())
        assert read_to_end(sock) == "reset"
    details = sink.wait_event()
    assert details["outcome"] == "reset" and details["ja4"].startswith("t13i")


def test_bad_arguments_are_refused(certificate):
    with pytest.raises(ValueError, match="mode"):
        CloudListener([("127.0.0.1", 0)], mode="answer", certificate=certificate)
    with pytest.raises(ValueError, match="certificate"):
        CloudListener([("127.0.0.1", 0)])


# -------------------------------------------------------------- bad peers


def test_an_http_request_is_not_tls_with_a_preview(start):
    listener, sink = start()
    request = b"GET /api HTTP/1.1\r\nHost: n-devs.tplinkcloud.com\r\nUser-Agent: x\r\n\r\n"
    with connect(listener.port) as sock:
        sock.sendall(request)
        assert read_to_end(sock) == b""
    details = sink.wait_event()
    assert details["outcome"] == "not_tls" and "HTTP" in details["reason"]
    assert details["preview"] == request[:64].hex()
    assert "ja3" not in details


def test_random_bytes_are_not_tls(start):
    listener, sink = start()
    rng = random.Random(7)
    data = bytes([rng.randrange(0x00, 0x16)]) + rng.randbytes(300)
    with connect(listener.port) as sock:
        sock.sendall(data)
        read_to_end(sock)
    details = sink.wait_event()
    assert details["outcome"] == "not_tls" and details["preview"] == data[:64].hex()


@pytest.mark.parametrize("low_water", [True, False], ids=["rcvlowat", "no-rcvlowat"])
def test_a_hello_trickled_a_byte_at_a_time_completes_the_handshake(start, monkeypatch,
                                                                   low_water):
    """Each byte its own segment: the listener wakes only when the parser's "needed"
    is there (SO_RCVLOWAT), and OpenSSL still reads the whole hello from the socket.
    Where SO_RCVLOWAT cannot be set, it peeks at a slow pace instead of spinning."""
    if not low_water:
        monkeypatch.setattr(listener_module, "_set_low_water", lambda sock, size: False)
    listener, sink = start()
    client = BioClient(server_hostname=CLOUD)
    assert len(client.hello) > 400
    with connect(listener.port) as sock:
        for i in range(len(client.hello)):
            sock.send(client.hello[i:i + 1])
            time.sleep(0.0005)  # let each byte arrive alone; nothing to wait on instead
        client.finish(sock)
        client.send(sock, b"after a slow start")
    details = sink.wait_event()
    assert (details["outcome"], details["sni"]) == ("completed", CLOUD)
    assert bytes.fromhex(details["app_data_preview"]) == b"after a slow start"
    assert details["ja3"] == parse_client_hello(client.hello).ja3_string()
    peeks = stats(listener).peeks
    if low_water:
        assert peeks <= 6  # not one per byte, and no busy loop
    else:
        assert 3 <= peeks < len(client.hello) / 4  # about one per PEEK_INTERVAL


def test_a_hello_split_over_tls_records_is_read_whole(start):
    """One handshake message in three records (legal, rare): the fingerprint is of the
    reassembled hello."""
    listener, sink = start(mode="log", certificate=None)
    hello = hello_bytes(CLOUD)
    body = hello[5:]
    parts = [body[:10], body[10:200], body[200:]]
    records = b"".join(hello[:3] + len(p).to_bytes(2, "big") + p for p in parts)
    with connect(listener.port) as sock:
        sock.sendall(records)
        read_to_end(sock)
    details = sink.wait_event()
    assert (details["outcome"], details["sni"]) == ("logged", CLOUD)
    assert details["ja4"] == parse_client_hello(hello).ja4()


def test_slowloris_half_a_hello_is_closed_after_hello_timeout(start):
    listener, sink = start(hello_timeout=0.5)
    hello = hello_bytes()
    with connect(listener.port) as sock:
        sock.sendall(hello[: len(hello) // 2])
        started = time.monotonic()
        assert read_to_end(sock) in (b"", "reset")
        waited = time.monotonic() - started
    assert 0.4 <= waited < 5
    details = sink.wait_event()
    assert (details["outcome"], details["received"]) == ("timeout", len(hello) // 2)
    assert listener.call(lambda: listener.server.open_connections) == 0


def test_a_peer_that_closes_mid_hello_is_recorded_at_once(start):
    listener, sink = start(hello_timeout=30)
    with connect(listener.port) as sock:
        sock.sendall(hello_bytes()[:100])
        sock.shutdown(socket.SHUT_WR)
        started = time.monotonic()
        read_to_end(sock)
        assert time.monotonic() - started < 5  # not the hello timeout
    details = sink.wait_event()
    assert (details["outcome"], details["received"]) == ("closed", 100)


def test_random_and_mangled_input_never_stops_the_listener(start):
    listener, sink = start(handshake_timeout=3)
    rng = random.Random(2024)
    good = hello_bytes(CLOUD)
    known = {"not_tls", "closed", "peer_reset", "timeout", "tls_error", "completed",
             "handshake_failure", "decode_error", "illegal_parameter", "no_shared_cipher",
             "wrong_version", "unsupported_protocol", "version_too_low", "unexpected_message",
             "record_overflow", "bad_record_mac", "protocol_version", "decrypt_error"}
    total = 240
    for i in range(total):
        kind = i % 4
        if kind == 0:
            data = rng.randbytes(rng.randrange(1, 400))
        elif kind == 1:  # a plausible record header, then noise
            data = bytes([0x16, 3, rng.randrange(4)]) + rng.randbytes(rng.randrange(0, 600))
        elif kind == 2:  # a real hello with bytes flipped
            mangled = bytearray(good)
            for _ in range(rng.randrange(1, 8)):
                mangled[rng.randrange(len(mangled))] = rng.randrange(256)
            data = bytes(mangled)
        else:  # cut short, or SSLv2-style framing
            data = good[: rng.randrange(1, len(good))] if i % 8 == 3 else (
                bytes([0x80 | rng.randrange(0x80), rng.randrange(256), 1]) + rng.randbytes(60))
        with connect(listener.port) as sock:
            with contextlib.suppress(OSError):
                sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)
            read_to_end(sock)
    events = sink.wait_events(total, timeout=60)
    outcomes = Counter(details["outcome"] for _, _, details in events)
    assert set(outcomes) <= known, outcomes
    assert outcomes["not_tls"] > total / 4
    assert stats(listener).errors == 0
    with connect(listener.port) as raw, insecure_context().wrap_socket(raw) as tls:
        tls.sendall(b"still here")
    last = sink.wait_events(total + 1)[-1][2]
    assert (last["outcome"], last["app_data_len"]) == ("completed", 10)


# ------------------------------------------------------------------ limits


@pytest.fixture
def many_files() -> Iterator[None]:
    """Room for 1,000 client sockets and the listener's end of them."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 4096
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {need}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_fresh_client_is_served_under_1000_idle_connections(start, many_files):
    listener, sink = start(max_connections=256, hello_timeout=60)
    idle = [connect(listener.port) for _ in range(1000)]
    try:
        with connect(listener.port) as raw, insecure_context().wrap_socket(raw) as tls:
            tls.sendall(b"fresh")
        first = sink.wait_events(745 + 1)
        fresh = [d for _, _, d in first if d["outcome"] == "completed"]
        assert len(fresh) == 1 and fresh[0]["app_data_len"] == 5
        # The fresh client took the slot of the oldest idle connection: the first 745
        # were evicted, oldest first; a client that was evicted sees the close.
        assert stats(listener).evicted == 745
        assert read_to_end(idle[0]) == b""
        assert listener.call(lambda: listener.server.open_connections) <= 256
    finally:
        for sock in idle:
            sock.close()
    events = sink.wait_events(1001, timeout=30)
    assert Counter(d["outcome"] for _, _, d in events) == {
        "evicted": 745, "closed": 255, "completed": 1}
    assert all(d["received"] == 0 for _, _, d in events if d["outcome"] != "completed")
    assert stats(listener).errors == 0


def test_idle_connections_give_way_to_a_new_one_oldest_first(start):
    listener, sink = start(max_connections=2, hello_timeout=60)
    first, second = connect(listener.port), connect(listener.port)
    try:
        with connect(listener.port) as raw, insecure_context().wrap_socket(raw) as tls:
            tls.sendall(b"x")
        assert read_to_end(first) == b""  # evicted
        events = sink.wait_events(2)
        assert sorted(d["outcome"] for _, _, d in events) == ["completed", "evicted"]
    finally:
        first.close()
        second.close()
    assert sink.wait_events(3)[-1][2]["outcome"] == "closed"  # the second stayed till now


@contextlib.contextmanager
def loop_held(listener):
    """Keep the listener's event loop busy (blocked in a callback) inside the block."""
    entered, gate = threading.Event(), threading.Event()

    def hold() -> None:
        entered.set()
        gate.wait(10)

    listener.loop.call_soon_threadsafe(hold)
    assert entered.wait(10)
    try:
        yield
    finally:
        gate.set()


def test_connections_evicted_before_their_task_ran_are_closed_and_recorded(start):
    """Three connections in one accept batch with one slot: the first two are evicted
    before their tasks take a step (a task cancelled then never runs its body)."""
    listener, sink = start(max_connections=1, mode="log", certificate=None,
                           hello_timeout=60)
    with loop_held(listener):  # all three connect while the loop cannot accept
        socks = [connect(listener.port) for _ in range(3)]
    try:
        assert read_to_end(socks[0]) == b"" and read_to_end(socks[1]) == b""
        socks[2].sendall(hello_bytes())
        assert read_to_end(socks[2]) == b""
    finally:
        for sock in socks:
            sock.close()
    events = sink.wait_events(3)
    assert [d["outcome"] for _, _, d in events] == ["evicted", "evicted", "logged"]
    assert stats(listener).evicted == 2
    assert listener.call(lambda: listener.server.open_connections) == 0


def test_a_waiting_connection_whose_hello_sits_unread_is_not_evicted(start):
    """Under a flood the oldest waiting connection is often one just accepted with
    its hello already in the socket: it keeps its slot, the newcomers are refused."""
    listener, sink = start(max_connections=1, mode="log", certificate=None,
                           hello_timeout=60)
    with loop_held(listener):
        socks = [connect(listener.port) for _ in range(3)]
        for sock in socks:
            sock.sendall(hello_bytes())  # all three hellos wait in their sockets
    try:
        assert read_to_end(socks[0]) == b""  # served: logged, then our FIN
        assert [read_to_end(sock) for sock in socks[1:]] == ["reset", "reset"]
    finally:
        for sock in socks:
            sock.close()
    assert [d["outcome"] for _, _, d in sink.wait_events(1)] == ["logged"]
    sink.wait_count("over_capacity", 2)
    assert stats(listener).evicted == 0


def test_over_capacity_a_new_connection_is_closed_at_once_and_counted(start):
    """Both slots are past their hello (in the handshake): nothing to evict."""
    listener, sink = start(max_connections=2, handshake_timeout=60)
    stalled = [connect(listener.port) for _ in range(2)]
    try:
        for sock in stalled:
            sock.sendall(hello_bytes())
            assert sock.recv(5)  # our ServerHello: the listener is in the handshake
        assert connect_and_read(listener.port) == "reset"  # closed at accept
        sink.wait_count("over_capacity", 1)
        assert stats(listener).over_capacity == 1
        assert sink.events == []  # counted, not an event
        for sock in stalled:  # a FIN: the peer "closed" (close() alone would be a RST,
            sock.shutdown(socket.SHUT_WR)  # with our flight unread)
            read_to_end(sock)
    finally:
        for sock in stalled:
            sock.close()
    assert [d["outcome"] for _, _, d in sink.wait_events(2)] == ["closed", "closed"]
    with connect(listener.port) as raw, insecure_context().wrap_socket(raw):
        pass  # the slots are free again
    assert sink.wait_events(3)[-1][2]["outcome"] == "completed"


def test_a_client_over_its_rate_is_closed_at_once_and_counted(start):
    listener, sink = start(mode="log", certificate=None,
                           limiter=RateLimiter(rate=0.001, burst=2))
    for _ in range(2):
        with connect(listener.port) as sock:
            sock.sendall(hello_bytes())
            assert read_to_end(sock) == b""
    assert connect_and_read(listener.port) == "reset"  # closed at accept
    sink.wait_count("rate_limited", 1)
    assert [d["outcome"] for _, _, d in sink.wait_events(2)] == ["logged", "logged"]
    assert stats(listener).rate_limited == 1


def test_closing_the_listener_records_the_open_connections(start):
    listener, sink = start(handshake_timeout=60)
    with connect(listener.port) as sock:
        sock.sendall(hello_bytes(CLOUD))
        assert sock.recv(5)  # in the handshake
        listener.close()
        read_to_end(sock)  # the rest of our flight, then the close
    details = sink.wait_event()
    assert (details["outcome"], details["sni"]) == ("shutdown", CLOUD)
    with pytest.raises(OSError):
        connect(listener.port, timeout=2)
