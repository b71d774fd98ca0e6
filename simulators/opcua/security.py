"""Endpoints, the server certificate, users and the client trust list of the OPC UA simulator.

Everything here runs without threads: asyncua's own file helpers (``setup_self_signed_certificate``,
``TrustStore.load``) read and write through anyio worker threads, which outlive the call and
would show up as leaked threads in the tests. The files are small, so they are read inline.
"""

from __future__ import annotations

import datetime
import hmac
import ipaddress
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

from asyncua import ua
from asyncua.common.utils import ServiceError
from asyncua.crypto import cert_gen
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.crypto.truststore import TrustStore
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions
from asyncua.server.user_managers import UserManager
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

Policy: TypeAlias = ua.SecurityPolicyType

NONE_ONLY: tuple[Policy, ...] = (Policy.NoSecurity,)
"""The default: one endpoint, SecurityPolicy None, no certificate needed."""
SECURE_POLICIES: tuple[Policy, ...] = (
    Policy.Basic256Sha256_Sign,
    Policy.Basic256Sha256_SignAndEncrypt,
    Policy.Aes128Sha256RsaOaep_Sign,
    Policy.Aes128Sha256RsaOaep_SignAndEncrypt,
    Policy.Aes256Sha256RsaPss_Sign,
    Policy.Aes256Sha256RsaPss_SignAndEncrypt,
)
"""The policies current OPC UA profiles allow (the Basic128Rsa15 and Basic256 ones are
deprecated and not offered)."""
SUPPORTED_POLICIES = frozenset(NONE_ONLY + SECURE_POLICIES)
APPLICATION_URI = "urn:edge-agent:sim:opcua-server"
KEY_FILE, CERT_FILE = "server_key.pem", "server_cert.der"
CERT_DAYS = 365


def check_policies(policies: Iterable[Policy]) -> tuple[Policy, ...]:
    """The endpoints to offer, in order and without repeats; ValueError for anything else."""
    out = tuple(dict.fromkeys(policies))
    if not out:
        raise ValueError("security: offer at least one endpoint")
    bad = [p.name for p in out if p not in SUPPORTED_POLICIES]
    if bad:
        raise ValueError(f"security: unsupported policies {bad}; use NONE_ONLY or SECURE_POLICIES")
    return out


@dataclass(frozen=True)
class ServerIdentity:
    """The server's application instance certificate and its private key."""

    certificate: x509.Certificate
    private_key: rsa.RSAPrivateKey

    @property
    def der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)


def server_identity(
    pki_dir: Path | None, host: str, application_uri: str = APPLICATION_URI
) -> ServerIdentity:
    """The certificate in ``pki_dir`` if it is still good for ``application_uri``, else a new
    self-signed one (written there when ``pki_dir`` is given, kept in memory otherwise)."""
    if pki_dir is not None:
        found = _load_identity(pki_dir, application_uri)
        if found is not None:
            return found
    key = cert_gen.generate_private_key()
    names: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(application_uri),
        x509.DNSName("localhost"),
        x509.DNSName(socket.gethostname()),  # asyncua logs a warning without it
    ]
    try:
        names.append(x509.IPAddress(ipaddress.ip_address(host)))
    except ValueError:
        names.append(x509.DNSName(host))
    cert = cert_gen.generate_self_signed_app_certificate(
        key,
        "edge-agent OPC UA station simulator",
        {},
        names,
        extended=[ExtendedKeyUsageOID.SERVER_AUTH],
        days=CERT_DAYS,
    )
    identity = ServerIdentity(cert, key)
    if pki_dir is not None:
        pki_dir.mkdir(parents=True, exist_ok=True)
        (pki_dir / KEY_FILE).write_bytes(cert_gen.dump_private_key_as_pem(key))
        (pki_dir / CERT_FILE).write_bytes(identity.der)
    return identity


def _load_identity(pki_dir: Path, application_uri: str) -> ServerIdentity | None:
    key_file, cert_file = pki_dir / KEY_FILE, pki_dir / CERT_FILE
    if not (key_file.is_file() and cert_file.is_file()):
        return None
    key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    cert = x509.load_der_x509_certificate(cert_file.read_bytes())
    if not isinstance(key, rsa.RSAPrivateKey) or key.public_key() != cert.public_key():
        return None
    now = datetime.datetime.now(datetime.UTC)
    if not cert.not_valid_before_utc <= now < cert.not_valid_after_utc:
        return None
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return None
    if application_uri not in san.value.get_values_for_type(x509.UniformResourceIdentifier):
        return None
    return ServerIdentity(cert, key)


class StationUsers(UserManager):  # type: ignore[misc]  # asyncua is untyped here
    """Username/password pairs and, if allowed, anonymous users; all may read and write.

    asyncua asks ``get_user`` at ActivateSession. Its default manager lets everyone in (and
    makes ``admin`` an administrator); asyncua's ``UserRole.Anonymous`` may do nothing at all,
    so admitted anonymous clients get the ``User`` role.

    ``secure_only``: asyncua's server opens a SecurityPolicy None channel even when no None
    endpoint is offered (it must, for GetEndpoints), and then lets a session run on it. A
    server that offers only secure endpoints refuses such sessions, so this does: a session
    whose channel carries no client certificate is refused with BadSecurityModeInsufficient.
    """

    def __init__(
        self,
        users: Mapping[str, str],
        *,
        anonymous: bool,
        secure_only: bool,
        certificates: Sequence[bytes] = (),
    ) -> None:
        self._users = dict(users)
        self.anonymous = anonymous
        self.secure_only = secure_only
        self._certificates = {bytes(c) for c in certificates}

    def get_user(
        self,
        iserver: Any,
        username: str | None = None,
        password: str | None = None,
        certificate: Any = None,
    ) -> User | None:
        if self.secure_only and not certificate:
            raise ServiceError(ua.StatusCodes.BadSecurityModeInsufficient)
        if username is None:
            # asyncua hands over the X509 token's certificate (signature checked), or for
            # other tokens the channel's: a registered user certificate is that user.
            der = _der(certificate)
            if der is not None and der in self._certificates:
                return User(role=UserRole.User, name="certificate")
            return User(role=UserRole.User) if self.anonymous else None
        expected = self._users.get(username)
        if expected is None or not hmac.compare_digest(
            expected.encode("utf-8"), (password or "").encode("utf-8")
        ):
            return None  # asyncua answers BadUserAccessDenied
        return User(role=UserRole.User, name=username)


class FolderTrustStore(TrustStore):  # type: ignore[misc]
    """The client certificates (or their CAs) in one folder, ``*.der`` or ``*.pem``.

    Read at every check, so a certificate dropped into the folder is trusted from the next
    session on, as on PLCs whose trust list is a folder. asyncua's TrustStore loads its folder
    once, through anyio worker threads; this one reads it inline. No revocation lists.
    """

    def __init__(self, folder: Path) -> None:
        super().__init__([folder], [])
        self.folder = folder

    async def load(self) -> None:
        """Nothing to load ahead: the folder is read at every check."""

    def certificates(self) -> list[x509.Certificate]:
        certs = []
        for path in sorted(self.folder.glob("*")):
            suffix = path.suffix.lower()
            if suffix == ".der":
                certs.append(x509.load_der_x509_certificate(path.read_bytes()))
            elif suffix == ".pem":
                certs.append(x509.load_pem_x509_certificate(path.read_bytes()))
        return certs

    def is_trusted(self, certificate: x509.Certificate) -> bool:
        certs = self.certificates()
        if not certs:
            return False
        store = x509.verification.Store(certs)
        verifier = self.policy_builder.store(store).build_client_verifier()
        try:
            verifier.verify(certificate, [])
        except x509.verification.VerificationError:
            return False
        return True

    def is_revoked(self, certificate: x509.Certificate) -> bool:
        return False


def trust_list_validator(folder: Path) -> CertificateValidator:
    """asyncua's validator with every check on: validity period, application URI = the
    certificate's SAN URI, key usage, client-auth extended key usage, trusted by the folder.

    asyncua runs it at CreateSession (not at OpenSecureChannel): an untrusted client gets its
    secure channel, then CreateSession fails with BadCertificateUntrusted (or the first check
    that failed) and the server closes nothing; the client should.
    """
    options = (
        CertificateValidatorOptions.TRUSTED_VALIDATION | CertificateValidatorOptions.PEER_CLIENT
    )
    return CertificateValidator(options, FolderTrustStore(folder))


def identity_tokens(
    users: Mapping[str, str], anonymous: bool, certificates: Sequence[bytes] = ()
) -> list[type]:
    """The user identity token types the endpoints advertise (and ActivateSession accepts)."""
    tokens: list[type] = []
    if anonymous:
        tokens.append(ua.AnonymousIdentityToken)
    if users:
        tokens.append(ua.UserNameIdentityToken)
    if certificates:
        tokens.append(ua.X509IdentityToken)
    if not tokens:
        raise ValueError("nobody could log in: allow anonymous or give users")
    return tokens


def _der(certificate: Any) -> bytes | None:
    if certificate is None:
        return None
    if isinstance(certificate, bytes):
        return certificate
    if isinstance(certificate, x509.Certificate):
        return certificate.public_bytes(serialization.Encoding.DER)
    return None


def is_secure(policies: Sequence[Policy]) -> bool:
    return any(p is not Policy.NoSecurity for p in policies)
