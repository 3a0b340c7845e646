"""The site's certificates, made with `cryptography` (no openssl by hand): a site CA the readers
pin, and the broker's server certificate signed by it, for the names and addresses the readers
use. Layout under the config directory (host_sync/paths.py):

    ca/ca.pem, ca/ca.key      the site CA (the key is the owner's only: 0600; mosquitto never reads it)
    ca/next.pem, ca/next.key  the next CA while a roll is under way (`site roll-ca`)
    ca/trust.pem              what readers pin and the host trusts: the CA, plus the next one
                              during a roll (a file with both; readers accept a server signed by
                              either)
    broker/server.pem, .key   the broker's certificate and key

Rolling the CA is two steps so no reader is cut off: `begin` makes the next CA and puts both in
trust.pem (re-provision the readers then: they trust both); `finish` makes the next CA the CA,
signs a new server certificate with it and leaves only it in trust.pem.

EC P-256 keys throughout: what the ESP32's mbedTLS verifies fastest, and small on a reader.
"""
from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from host_sync.ids import address_problem  # the one rule for broker addresses (CLI too)

CA_DAYS = 3650
SERVER_DAYS = 730
LOCAL_NAMES = ("localhost", "127.0.0.1")  # the host's own services reach the broker there


class PkiError(ValueError):
    pass


@dataclass(frozen=True)
class CertInfo:
    path: str
    subject: str
    not_after: datetime.datetime
    names: tuple[str, ...]  # SANs (server) or () (CA)
    fingerprint: str  # sha256, hex

    def days_left(self) -> int:
        return (self.not_after - datetime.datetime.now(datetime.timezone.utc)).days


def _now() -> datetime.datetime:
    # a few minutes back: a reader or host whose clock is a little behind still accepts it
    return datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)


def write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Atomically, never readable by others even for a moment."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _ku(ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=True, key_cert_sign=ca, crl_sign=ca,
                         content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, encipher_only=False,
                         decipher_only=False)


def make_ca(common_name: str, days: int = CA_DAYS) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "grindvakt"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    start = _now()
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_ku(True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return cert, key


def split_names(names: Sequence[str]) -> list[x509.GeneralName]:
    """DNS names and IP addresses as SANs; a bad one is refused by name."""
    out: list[x509.GeneralName] = []
    for n in names:
        n = n.strip()
        why = address_problem(n)
        if why:
            raise PkiError("%s: %s" % (n or repr(n), why))
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(n)))
            continue
        except ValueError:
            pass
        out.append(x509.DNSName(n.lower()))
    return out


def make_server(ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, names: Sequence[str],
                days: int = SERVER_DAYS) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    names = list(dict.fromkeys(list(names) + list(LOCAL_NAMES)))
    sans = split_names(names)
    key = ec.generate_private_key(ec.SECP256R1())
    start = _now()
    until = min(start + datetime.timedelta(days=days), ca.not_valid_after_utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "grindvakt"),
                                     x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(until)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_ku(False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    return cert, key


class SitePki:
    """The certificate files of one host (see the module doc for the layout)."""

    def __init__(self, config_dir: str | os.PathLike):
        self.dir = Path(config_dir).resolve()
        self.ca_dir = self.dir / "ca"
        self.broker_dir = self.dir / "broker"

    # -- paths --
    @property
    def ca_pem(self) -> Path:
        return self.ca_dir / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.ca_dir / "ca.key"

    @property
    def next_pem(self) -> Path:
        return self.ca_dir / "next.pem"

    @property
    def next_key(self) -> Path:
        return self.ca_dir / "next.key"

    @property
    def trust_pem(self) -> Path:
        return self.ca_dir / "trust.pem"

    @property
    def server_pem(self) -> Path:
        return self.broker_dir / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.broker_dir / "server.key"

    def exists(self) -> bool:
        return self.ca_pem.exists() and self.ca_key.exists()

    def rolling(self) -> bool:
        return self.next_pem.exists()

    # -- reading --
    @staticmethod
    def _load_cert(path: Path) -> x509.Certificate:
        try:
            return x509.load_pem_x509_certificate(path.read_bytes())
        except (OSError, ValueError) as e:
            raise PkiError("cannot read the certificate %s: %s" % (path, e))

    @staticmethod
    def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), None)
        except (OSError, ValueError, TypeError) as e:
            raise PkiError("cannot read the key %s: %s" % (path, e))
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise PkiError("%s is not an EC key" % path)
        return key

    def info(self, path: Path) -> CertInfo:
        c = self._load_cert(path)
        try:
            san = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            names = tuple([str(v) for v in san.get_values_for_type(x509.DNSName)] +
                          [str(v) for v in san.get_values_for_type(x509.IPAddress)])
        except x509.ExtensionNotFound:
            names = ()
        return CertInfo(str(path), c.subject.rfc4514_string(), c.not_valid_after_utc, names,
                        c.fingerprint(hashes.SHA256()).hex())

    def server_names(self) -> list[str]:
        return list(self.info(self.server_pem).names)

    # -- writing --
    def init(self, names: Sequence[str], ca_name: str, force: bool = False) -> None:
        """A new CA and a server certificate for `names`; an existing CA is kept (a second
        init must not cut off every reader) unless force."""
        for d, mode in ((self.dir, 0o755), (self.ca_dir, 0o755), (self.broker_dir, 0o755)):
            d.mkdir(parents=True, exist_ok=True)
            os.chmod(d, mode)
        if force or not self.exists():
            ca, key = make_ca(ca_name)
            self.ca_pem.write_bytes(_cert_pem(ca))
            write_private(self.ca_key, _key_pem(key))
            for p in (self.next_pem, self.next_key):
                p.unlink(missing_ok=True)
        self._write_trust()
        self.issue_server(names)

    def issue_server(self, names: Sequence[str] | None = None) -> CertInfo:
        """A new server key and certificate, signed by the current CA; names default to the
        current certificate's."""
        if names is None:
            if not self.server_pem.exists():
                raise PkiError("no server certificate yet: run 'host-sync site init'")
            names = [n for n in self.server_names() if n not in LOCAL_NAMES] or list(LOCAL_NAMES)
        ca, key = self._load_cert(self.ca_pem), self._load_key(self.ca_key)
        cert, skey = make_server(ca, key, names)
        write_private(self.server_key, _key_pem(skey), 0o640)
        self.server_pem.write_bytes(_cert_pem(cert))
        return self.info(self.server_pem)

    def roll_begin(self, ca_name: str) -> CertInfo:
        if not self.exists():
            raise PkiError("no site CA yet: run 'host-sync site init'")
        if self.rolling():
            raise PkiError("a CA roll is already under way (next CA %s): re-provision the "
                           "readers, then 'host-sync site roll-ca --finish'" % self.next_pem)
        ca, key = make_ca(ca_name)
        self.next_pem.write_bytes(_cert_pem(ca))
        write_private(self.next_key, _key_pem(key))
        self._write_trust()
        return self.info(self.next_pem)

    def roll_finish(self) -> CertInfo:
        if not self.rolling():
            raise PkiError("no CA roll under way: start one with 'host-sync site roll-ca'")
        names = [n for n in self.server_names() if n not in LOCAL_NAMES] or list(LOCAL_NAMES)
        old = self.ca_pem.read_bytes()
        (self.ca_dir / "previous.pem").write_bytes(old)
        os.replace(self.next_key, self.ca_key)
        os.replace(self.next_pem, self.ca_pem)
        (self.ca_dir / "previous.key").unlink(missing_ok=True)
        self._write_trust()
        self.issue_server(names)
        return self.info(self.ca_pem)

    def _write_trust(self) -> None:
        pems = [self.ca_pem.read_bytes()]
        if self.next_pem.exists():
            pems.append(self.next_pem.read_bytes())
        tmp = self.trust_pem.with_name("trust.pem.tmp")
        tmp.write_bytes(b"".join(pems))
        os.chmod(tmp, 0o644)
        os.replace(tmp, self.trust_pem)

    def trust_count(self) -> int:
        return self.trust_pem.read_bytes().count(b"-----BEGIN CERTIFICATE-----")
