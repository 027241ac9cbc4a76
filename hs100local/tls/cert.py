"""The cloud listener's self-signed certificate: made once, reused, remade when broken.

No client that checks certificates will accept it, and that is the point: a real
plug pins TP-Link's private CA and answers our certificate with an ``unknown_ca``
alert, which the listener records as proof that the plug is isolated and cannot
be intercepted. The certificate only has to let the handshake get that far, with
the names a plug asks for (``n-devs.tplinkcloud.com`` and friends) in case a
client that does not pin looks at them.

``cryptography`` is imported only when a certificate is checked or made: the CLI
imports this module on every start, and loading cryptography costs tens of ms.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import stat
import tempfile
from pathlib import Path

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
    cert_pem, key_pem = generate()
    _write_atomically(key_path, key_pem, 0o600)
    _write_atomically(cert_path, cert_pem, 0o644)
    return cert_path, key_path


def generate() -> tuple[bytes, bytes]:
    """A new self-signed RSA-2048 certificate for the cloud names: (cert PEM, key PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, COMMON_NAME)])
    now = datetime.datetime.now(datetime.timezone.utc)
    names = [x509.DNSName(COMMON_NAME), *(x509.DNSName(n) for n in SUBJECT_ALT_NAMES)]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOT_BEFORE)
        .not_valid_after(now + datetime.timedelta(days=365 * VALID_YEARS + 2))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        # keyEncipherment: the plug's TLS 1.0 suites use RSA key exchange
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_encipherment=True,
                          content_commitment=False, data_encipherment=False,
                          key_agreement=False, key_cert_sign=False, crl_sign=False,
                          encipher_only=False, decipher_only=False),
            critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _check(cert_path: Path, key_path: Path) -> str | None:
    """Why the pair on disk cannot be used ("missing" if neither exists), or None."""
    if not cert_path.exists() and not key_path.exists():
        return "missing"
    try:
        cert_pem, key_pem = cert_path.read_bytes(), key_path.read_bytes()
    except OSError as exc:
        return f"cannot read it ({exc})"
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        return f"{cert_path.name} is not a PEM certificate ({exc})"
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:  # TypeError: encrypted, no password
        return f"{key_path.name} is not an unencrypted PEM private key ({exc})"
    if key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        return "the key does not belong to the certificate"
    if cert.not_valid_after_utc <= datetime.datetime.now(datetime.timezone.utc):
        return f"it expired on {cert.not_valid_after_utc:%Y-%m-%d}"
    return None


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
