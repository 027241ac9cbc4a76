"""The cloud listener's self-signed certificate: made once, reused, remade when broken.

No client that checks certificates will accept it, and that is the point: a real
plug pins TP-Link's private CA and answers our certificate with an ``unknown_ca``
alert, which the listener records as proof that the plug is isolated and cannot
be intercepted. The certificate only has to let the handshake get that far, with
the names a plug asks for (``n-devs.tplinkcloud.com`` and friends) in case a
client that does not pin looks at them.

``cryptography`` never enters the daemon: an existing pair is checked with
:mod:`ssl` and a small DER reader, and a new one is made in a child interpreter
(loaded, cryptography's extension would stay mapped in ``serve`` for as long as it
runs, ~10 MB of a 40 MB budget, for a job done once).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger("hs100local.tls")

CERT_FILE = "cloud-cert.pem"
KEY_FILE = "cloud-key.pem"
COMMON_NAME = "n-devs.tplinkcloud.com"
#: names the plug firmware is known to contact over TLS (plug-facts.md)
SUBJECT_ALT_NAMES = ("*.tplinkcloud.com", "tplinkcloud.com", "*.tplinkra.com")
KEY_BITS = 2048
VALID_YEARS = 10
#: the certificate is valid from here: plugs boot with their clock at 2000-01-01
#: (no battery), and "not yet valid" should not be what a clock-less client sees
NOT_BEFORE = datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc)


def ensure_certificate(directory: Path) -> tuple[Path, Path]:
    """(certificate, key) PEM paths in ``directory``, generated on first use.

    An existing pair is reused if both files load, the key belongs to the
    certificate and the certificate has not expired; otherwise it is replaced (the
    reason is logged). The key is written with mode 0600, each file atomically
    (a temporary file renamed over the old one), so a crash leaves either the old
    or the new file, and a half-replaced pair fails the key check and is remade.
    """
    directory = Path(directory)
    cert_path, key_path = directory / CERT_FILE, directory / KEY_FILE
    problem = _check(cert_path, key_path)
    if problem is None:
        _tighten(key_path)
        return cert_path, key_path
    if problem == "missing":
        log.info("creating the cloud listener's certificate in %s", directory)
    else:
        log.warning("replacing the cloud listener's certificate in %s: %s", directory, problem)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    cert_pem, key_pem = generate_in_child()
    _write_atomically(key_path, key_pem, 0o600)
    _write_atomically(cert_path, cert_pem, 0o644)
    return cert_path, key_path


def generate_in_child(timeout: float = 120.0) -> tuple[bytes, bytes]:
    """:func:`generate` in a child interpreter, for the daemon: imported here,
    cryptography's extension (~10 MB) would stay mapped in ``serve`` for good, for a
    job done once in its life. The PEMs come back over a pipe."""
    import subprocess
    import sys

    from hs100local.errors import StoreError

    try:
        result = subprocess.run(
            [sys.executable, "-c", "from hs100local.tls.cert import _print_new_pair; "
                                   "_print_new_pair()"],
            capture_output=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StoreError(f"cannot create the cloud listener's certificate: {exc}") from None
    end = b"-----END CERTIFICATE-----\n"
    cert_pem, found, key_pem = result.stdout.partition(end)
    if result.returncode != 0 or not found or b"PRIVATE KEY-----" not in key_pem:
        reason = (result.stderr.decode(errors="replace").strip().splitlines() or ["?"])[-1]
        raise StoreError(f"cannot create the cloud listener's certificate: {reason}")
    return cert_pem + end, key_pem


def _print_new_pair() -> None:
    import sys

    cert_pem, key_pem = generate()
    sys.stdout.buffer.write(cert_pem + key_pem)
    sys.stdout.buffer.flush()


def self_signed(key: Any, common_name: str, not_before: datetime.datetime,
                not_after: datetime.datetime, extensions: list[tuple[Any, bool]]) -> bytes:
    """A self-signed certificate (PEM) for ``key``: subject = issuer = ``common_name``,
    a random serial, SHA-256, and the given (extension, critical) pairs. Shared by the
    listener's certificate and the emulated plug's throwaway CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(not_before).not_valid_after(not_after))
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def generate() -> tuple[bytes, bytes]:
    """A new self-signed RSA-2048 certificate for the cloud names: (cert PEM, key PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    now = datetime.datetime.now(datetime.timezone.utc)
    names = [x509.DNSName(COMMON_NAME), *(x509.DNSName(n) for n in SUBJECT_ALT_NAMES)]
    cert = self_signed(key, COMMON_NAME, NOT_BEFORE,
                       now + datetime.timedelta(days=365 * VALID_YEARS + 2), [
        (x509.SubjectAlternativeName(names), False),
        (x509.BasicConstraints(ca=False, path_length=None), True),
        # keyEncipherment: the plug's TLS 1.0 suites use RSA key exchange
        (x509.KeyUsage(digital_signature=True, key_encipherment=True,
                       content_commitment=False, data_encipherment=False, key_agreement=False,
                       key_cert_sign=False, crl_sign=False, encipher_only=False,
                       decipher_only=False), True),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
        (x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False),
    ])
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert, key_pem


def _check(cert_path: Path, key_path: Path) -> str | None:
    """Why the pair on disk cannot be used ("missing" if neither exists), or None.

    Checked with the standard library only (OpenSSL through :mod:`ssl`, and the
    expiry read from the DER): ``cryptography`` costs the daemon about 7 MB of
    memory for as long as it runs, and a reused certificate does not need it.
    """
    if not cert_path.exists() and not key_path.exists():
        return "missing"
    try:
        cert_pem, key_pem = cert_path.read_bytes(), key_path.read_bytes()
    except OSError as exc:
        return f"cannot read it ({exc})"
    import ssl

    try:
        not_after = not_valid_after(ssl.PEM_cert_to_DER_cert(cert_pem.decode("ascii")))
    except (ValueError, UnicodeDecodeError) as exc:
        return f"{cert_path.name} is not a PEM certificate ({exc})"
    if b"PRIVATE KEY-----" not in key_pem or b"ENCRYPTED" in key_pem:
        return f"{key_path.name} is not an unencrypted PEM private key"
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        # A password callback that fails: never OpenSSL's prompt on a terminal.
        context.load_cert_chain(cert_path, key_path, password=_no_password)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            return "the key does not belong to the certificate"
        # The certificate parsed above, so what OpenSSL refuses is the key.
        return f"{key_path.name} is not an unencrypted PEM private key ({exc.reason or exc})"
    except (OSError, ValueError) as exc:
        return f"{key_path.name} is not an unencrypted PEM private key ({exc})"
    if not_after <= datetime.datetime.now(datetime.timezone.utc):
        return f"it expired on {not_after:%Y-%m-%d}"
    return None


def _no_password() -> bytes:
    raise ValueError("the key is encrypted")


def _der_item(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of content, end of content) of the DER item at ``pos``."""
    if pos + 2 > len(data):
        raise ValueError("truncated DER")
    tag, length = data[pos], data[pos + 1]
    pos += 2
    if length & 0x80:
        size = length & 0x7F
        if size == 0 or size > 4 or pos + size > len(data):
            raise ValueError("bad DER length")
        length = int.from_bytes(data[pos:pos + size], "big")
        pos += size
    if pos + length > len(data):
        raise ValueError("truncated DER")
    return tag, pos, pos + length


def not_valid_after(der: bytes) -> datetime.datetime:
    """The notAfter time of a DER X.509 certificate (RFC 5280 4.1.2.5), in UTC.

    Certificate = SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL,
    serialNumber, signature, issuer, validity SEQUENCE { notBefore, notAfter } … } … }.
    """
    _, pos, _end = _der_item(der, 0)  # Certificate
    tag, pos, _end = _der_item(der, pos)  # tbsCertificate
    if tag != 0x30:
        raise ValueError("no tbsCertificate")
    if der[pos] == 0xA0:  # explicit version
        pos = _der_item(der, pos)[2]
    for _ in range(3):  # serialNumber, signature, issuer
        pos = _der_item(der, pos)[2]
    tag, pos, _end = _der_item(der, pos)  # validity
    if tag != 0x30:
        raise ValueError("no validity")
    pos = _der_item(der, pos)[2]  # notBefore
    tag, start, stop = _der_item(der, pos)
    text = der[start:stop].decode("ascii")
    if tag == 0x17:  # UTCTime YYMMDDHHMMSSZ: 50-99 are 19xx
        year = int(text[:2])
        text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"
    elif tag != 0x18:  # GeneralizedTime YYYYMMDDHHMMSSZ
        raise ValueError("notAfter is not a time")
    if not text.endswith("Z") or len(text) != 15:
        raise ValueError(f"unsupported time {text!r}")
    return datetime.datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(
        tzinfo=datetime.timezone.utc)


def _tighten(key_path: Path) -> None:
    """Take group/other permissions off a reused key (copied in by hand, say)."""
    try:
        mode = stat.S_IMODE(key_path.stat().st_mode)
        if mode & 0o077:
            log.warning("%s was readable by others (mode %o); setting 0600", key_path, mode)
            key_path.chmod(0o600)
    except OSError as exc:
        log.warning("cannot check the permissions of %s: %s", key_path, exc)


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Write a temporary file with ``mode`` from its creation (the key is never
    readable by others, not even for a moment), flush it to disk, rename it over
    ``path``."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)  # mkstemp creates 0600; the cert may be public
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    try:  # the rename itself survives a power cut only once the directory is synced
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
