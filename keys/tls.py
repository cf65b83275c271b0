"""TLS material: a per-node ECDSA P-256 CA and the node certificate it issues.

The node certificate serves both directions of mutual TLS (serverAuth and clientAuth) and
names the node twice: the endpoint host (DNS name or IP) and ``URI:accord:node:<id>``,
which gRPC exposes to handlers as ``peer_uri``.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_LIFETIME = timedelta(days=3650)
CERT_LIFETIME = timedelta(days=397)
# What a CA key may do: sign certificates and CRLs, nothing else.
CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=False,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)
BACKDATE = timedelta(minutes=5)
CROSS_LIFETIME = timedelta(days=30)
# A serving node issues itself a new node certificate under the same CA this long before
# the old one ends (ADR 0017): the CA, and so the card, does not change.
CERT_RENEW_BEFORE = timedelta(days=30)


def node_uri(node: str) -> str:
    return f"accord:node:{node}"


@dataclass(frozen=True)
class TlsMaterial:
    """PEM bytes. ``*_key_pem`` are private and only ever read inside ``keys/``."""

    ca_cert_pem: bytes
    ca_key_pem: bytes
    cert_pem: bytes
    key_pem: bytes
    # After a CA rotation: the new CA certified by the old CA key (ADR 0017), sent after
    # the node certificate so that a partner still holding the old card accepts it at TLS
    # until GetCard brings the new card. Empty for a CA that was never rotated.
    cross_pem: bytes = b""

    @property
    def chain_pem(self) -> bytes:
        """The certificate chain this node presents, server and client alike."""
        return self.cert_pem + self.cross_pem


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _host_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def generate_tls(
    node: str, endpoint_host: str, now: datetime, *, generation: int = 0
) -> TlsMaterial:
    """A new CA and node certificate. Generation n > 0 (a rotation) names the CA
    ``<node> Accord CA n``, so old and new CA never share a subject."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    common = f"{node} Accord CA" + (f" {generation}" if generation else "")
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Accord"),
            x509.NameAttribute(NameOID.COMMON_NAME, common),
        ]
    )
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(CA_KEY_USAGE, critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_pem, key_pem = issue_node_certificate(ca_cert, ca_key, node, endpoint_host, now)
    return TlsMaterial(
        ca_cert_pem=ca_cert.public_bytes(serialization.Encoding.PEM),
        ca_key_pem=_pem_key(ca_key),
        cert_pem=cert_pem,
        key_pem=key_pem,
    )


def issue_node_certificate(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    node: str,
    endpoint_host: str,
    now: datetime,
) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [_host_name(endpoint_host)]
    if endpoint_host not in ("localhost", "127.0.0.1"):
        names.append(x509.DNSName("localhost"))
    names.append(x509.UniformResourceIdentifier(node_uri(node)))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CERT_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def cross_certify(old: TlsMaterial, new: TlsMaterial, now: datetime) -> bytes:
    """The new CA's name and key, certified by the old CA's key (PEM), valid for
    ``CROSS_LIFETIME``: long enough for every partner to fetch the new card."""
    old_ca = x509.load_pem_x509_certificate(old.ca_cert_pem)
    old_key = serialization.load_pem_private_key(old.ca_key_pem, password=None)
    new_ca = x509.load_pem_x509_certificate(new.ca_cert_pem)
    if not isinstance(old_key, ec.EllipticCurvePrivateKey):
        raise TypeError("the TLS CA key is not an ECDSA key")
    cross = (
        x509.CertificateBuilder()
        .subject_name(new_ca.subject)
        .issuer_name(old_ca.subject)
        .public_key(new_ca.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(min(now + CROSS_LIFETIME, old_ca.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(CA_KEY_USAGE, critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(new_ca.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(old_key.public_key()),
            critical=False,
        )
        .sign(old_key, hashes.SHA256())
    )
    return cross.public_bytes(serialization.Encoding.PEM)


def certificate_not_after(tls: TlsMaterial) -> datetime:
    return x509.load_pem_x509_certificate(tls.cert_pem).not_valid_after_utc


def renew_node_certificate(
    tls: TlsMaterial, node: str, endpoint_host: str, now: datetime
) -> TlsMaterial:
    """A new node certificate (and key) from the same CA; an expired cross certificate
    is dropped, a valid one kept."""
    ca_cert = x509.load_pem_x509_certificate(tls.ca_cert_pem)
    ca_key = serialization.load_pem_private_key(tls.ca_key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise TypeError("the TLS CA key is not an ECDSA key")
    cert_pem, key_pem = issue_node_certificate(ca_cert, ca_key, node, endpoint_host, now)
    cross = tls.cross_pem
    if cross and x509.load_pem_x509_certificate(cross).not_valid_after_utc <= now:
        cross = b""
    return TlsMaterial(tls.ca_cert_pem, tls.ca_key_pem, cert_pem, key_pem, cross)


def feed_consumer_uri(name: str) -> str:
    return f"accord:feed-consumer:{name}"


def issue_client_certificate(
    ca_cert_pem: bytes, ca_key_pem: bytes, name: str, now: datetime
) -> tuple[bytes, bytes]:
    """A TLS client certificate for a TAXII feed consumer (clientAuth only, never serverAuth),
    issued by the node's CA and naming the consumer as ``URI:accord:feed-consumer:<name>``.
    Returns (certificate PEM, private key PEM); the key is handed to the consumer once."""
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError("the node CA key is not an EC key")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Accord feed consumer"),
                    x509.NameAttribute(NameOID.COMMON_NAME, name),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CERT_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(feed_consumer_uri(name))]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def certificate_fingerprint(der: bytes) -> str:
    """``sha256:<hex>`` of a certificate's DER bytes: how a feed consumer is recognised."""
    digest = hashes.Hash(hashes.SHA256())
    digest.update(der)
    return "sha256:" + digest.finalize().hex()


def pem_fingerprint(cert_pem: bytes) -> str:
    cert = x509.load_pem_x509_certificate(cert_pem)
    return certificate_fingerprint(cert.public_bytes(serialization.Encoding.DER))


def feed_server_context(cert_pem: bytes, key_pem: bytes, client_ca_pem: bytes) -> ssl.SSLContext:
    """The TLS context of the TAXII feed: TLS 1.3 only, the node's certificate, and client
    certificates optional but, when sent, verified against the node's own CA (a certificate
    of any other CA fails the handshake, before any request is read). HTTP Basic consumers
    send none.

    ``ssl`` loads a private key only from a file: it is written to a private file (0600, in
    a 0700 directory) and removed again before this returns."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.verify_mode = ssl.CERT_OPTIONAL
    context.load_verify_locations(cadata=client_ca_pem.decode("ascii"))
    with tempfile.TemporaryDirectory(prefix="accord-feed-") as tmp:
        os.chmod(tmp, 0o700)
        path = os.path.join(tmp, "server.pem")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, cert_pem + b"\n" + key_pem)
        finally:
            os.close(fd)
        context.load_cert_chain(path)
    return context
