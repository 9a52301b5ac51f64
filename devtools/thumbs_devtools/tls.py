"""A throwaway CA, one server certificate and the passwords of the secure local servers, made once per state dir."""
from __future__ import annotations

import datetime
import ipaddress
import json
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from services.common.settings import PREFIX, Settings

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
    from cryptography.hazmat.primitives.hashes import SHA256

CA_PEM = "ca.pem"
KEYSTORE = "server.p12"  # the server key and certificate, then the CA: what Kafka and Cassandra present
TRUSTSTORE = "truststore.p12"  # only the CA: what the brokers trust when they talk to each other
SECRETS = "secrets.json"
KAFKA_USER = "admin"
SASL_MECHANISM = "SCRAM-SHA-512"
# Cassandra creates this superuser itself on first start; a throwaway local node keeps its well-known password.
CASSANDRA_USER = CASSANDRA_PASSWORD = "cassandra"
VALID_DAYS = 3650


@dataclass(frozen=True)
class Material:
    """Where the key stores are and their passwords (never in repr, so never in a log line)."""

    directory: Path
    store_password: str = field(repr=False)  # keystore, its key and the truststore
    kafka_password: str = field(repr=False)  # SCRAM password of KAFKA_USER

    @property
    def ca_pem(self) -> Path:
        return self.directory / CA_PEM

    @property
    def keystore(self) -> Path:
        return self.directory / KEYSTORE

    @property
    def truststore(self) -> Path:
        return self.directory / TRUSTSTORE


def directory(state_dir: Path) -> Path:
    return state_dir / "servers" / "tls"


def ensure(folder: Path, addresses: Sequence[str]) -> Material:
    """The material in `folder`; made on first use, with a certificate for `addresses` and localhost."""
    try:
        return load(folder)
    except FileNotFoundError:
        return generate(folder, addresses)


def load(folder: Path) -> Material:
    """Raises FileNotFoundError unless every file is there (the secrets file is written last)."""
    values = json.loads((folder / SECRETS).read_text())
    for name in (CA_PEM, KEYSTORE, TRUSTSTORE):
        if not (folder / name).is_file():
            raise FileNotFoundError(folder / name)
    return Material(folder, values["store_password"], values["kafka_password"])


class MissingPackage(RuntimeError):
    """The certificates are made with `cryptography`, which only the test extra installs."""


def generate(folder: Path, addresses: Sequence[str]) -> Material:
    try:  # imported late: only secure servers need it
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.serialization import pkcs12
    except ImportError:
        raise MissingPackage("secure servers need the `cryptography` package: pip install -e '.[test]'") from None

    material = Material(folder, secrets.token_urlsafe(18), secrets.token_urlsafe(18))
    ca_key, ca_cert = _certificate_authority()
    key, cert = _server_certificate(ca_key, ca_cert, addresses)
    # PBES2/AES-256 with an HMAC-SHA256 MAC: what current JDKs read and write by default.
    protection = (serialization.PrivateFormat.PKCS12.encryption_builder()
                  .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
                  .hmac_hash(_sha256()).build(material.store_password.encode()))
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    _write(material.ca_pem, ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)
    _write(material.keystore, pkcs12.serialize_key_and_certificates(b"server", key, cert, [ca_cert], protection))
    # Java ignores certificate-only PKCS12 entries unless they carry its "trusted" attribute, which this adds.
    _write(material.truststore, pkcs12.serialize_java_truststore([pkcs12.PKCS12Certificate(ca_cert, b"ca")], protection))
    secrets_json = {"store_password": material.store_password, "kafka_password": material.kafka_password}
    _write(folder / SECRETS, (json.dumps(secrets_json) + "\n").encode())
    return material


def _certificate_authority() -> tuple[RSAPrivateKey, x509.Certificate]:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "thumbs local servers CA")])
    cert = (_validity(x509.CertificateBuilder()).subject_name(name).issuer_name(name).public_key(key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(cert_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, _sha256()))
    return key, cert


def _server_certificate(ca_key: RSAPrivateKey, ca_cert: x509.Certificate,
                        addresses: Sequence[str]) -> tuple[RSAPrivateKey, x509.Certificate]:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    # Clients check the address they dialled against these: librdkafka, Java and Python all do by default.
    names: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address(a)) for a in dict.fromkeys(addresses)]
    names.append(x509.DNSName("localhost"))
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (_validity(x509.CertificateBuilder())
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "thumbs local servers")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=False), critical=True)
            # Brokers are clients of each other, so the one certificate serves both ends.
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
            .sign(ca_key, _sha256()))
    return key, cert


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    from cryptography import x509

    now = datetime.datetime.now(datetime.UTC)
    return (builder.serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))  # tolerates a little clock skew
            .not_valid_after(now + datetime.timedelta(days=VALID_DAYS)))


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    from cryptography import x509

    return x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=not cert_sign,
                         data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign, crl_sign=cert_sign,
                         encipher_only=False, decipher_only=False)


def _sha256() -> SHA256:
    from cryptography.hazmat.primitives import hashes

    return hashes.SHA256()


def _write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Created with its final mode, so a password-protected store is never readable by others, even briefly."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as sink:
        sink.write(data)


def client_settings(material: Material) -> dict[str, str]:
    """The THUMBS_* settings (unprefixed) that log in to the secure servers: their users, passwords and CA."""
    return {
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": SASL_MECHANISM,
        "KAFKA_SASL_USERNAME": KAFKA_USER,
        "KAFKA_SASL_PASSWORD": material.kafka_password,
        "KAFKA_SSL_CA_LOCATION": str(material.ca_pem),
        "CASSANDRA_USERNAME": CASSANDRA_USER,
        "CASSANDRA_PASSWORD": CASSANDRA_PASSWORD,
        "CASSANDRA_SSL_CA_LOCATION": str(material.ca_pem),
    }


def as_settings(values: dict[str, str]) -> Settings:
    """Settings from unprefixed THUMBS_* names, the way a process configured by `thumbs servers env` sees them."""
    return Settings.from_env({PREFIX + name: value for name, value in values.items()})
