"""The OPC UA connection's security: the agent's certificate, the server's, and the user.

The PKI folder (``pki:``) holds ``own/cert.der`` and ``own/key.pem`` (created on first start),
``trusted/`` (server certificates the agent accepts, DER or PEM; CA certificates work too) and
``rejected/`` (a server certificate the agent refused is written here, so trusting it is one
``mv rejected/X.der trusted/``).

asyncua validates no server certificate unless told to, and would connect to whatever
endpoint the server offers: here the configured policy and mode are required exactly (a
server offering only None is refused, never downgraded to), and the server's certificate must
pass asyncua's ``CertificateValidator`` with the trust list before the secure channel opens.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.utils import ServiceError
from asyncua.crypto import security_policies
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from asyncua.crypto.truststore import TrustStore
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding, load_pem_private_key
from cryptography.x509.oid import ExtendedKeyUsageOID

from drivers.opcua.config import OpcUaDevice, SecurityMode, SecurityPolicy
from drivers.threads import run_in_thread

POLICIES: dict[SecurityPolicy, type[security_policies.SecurityPolicy]] = {
    SecurityPolicy.BASIC256SHA256: security_policies.SecurityPolicyBasic256Sha256,
    SecurityPolicy.AES128_SHA256_RSAOAEP: security_policies.SecurityPolicyAes128Sha256RsaOaep,
    SecurityPolicy.AES256_SHA256_RSAPSS: security_policies.SecurityPolicyAes256Sha256RsaPss,
}
MODES = {
    SecurityMode.NONE: ua.MessageSecurityMode.None_,
    SecurityMode.SIGN: ua.MessageSecurityMode.Sign,
    SecurityMode.SIGN_AND_ENCRYPT: ua.MessageSecurityMode.SignAndEncrypt,
}
SERVER_CHECKS = (
    CertificateValidatorOptions.TIME_RANGE
    | CertificateValidatorOptions.TRUSTED
    | CertificateValidatorOptions.REVOKED
    | CertificateValidatorOptions.PEER_SERVER
)
"""Trusted, in its validity period, not revoked. Not the ApplicationUri check: many PLCs put
another URI in their certificate than in their endpoint description."""


class SecurityRefused(Exception):
    """The connection cannot be made as configured; the message says what to do."""


class Pki:
    """The agent's PKI folder for one device config."""

    def __init__(self, device: OpcUaDevice) -> None:
        self.root = Path(device.pki)
        self.cert = self.root / "own" / "cert.der"
        self.key = self.root / "own" / "key.pem"
        self.trusted = self.root / "trusted"
        self.rejected = self.root / "rejected"
        self.crl = self.root / "crl"
        self.application_uri = device.application_uri

    def ensure(self) -> None:
        """Create the folders and, on first start, the agent's certificate (blocking: run in a
        thread). An existing certificate is kept: the servers trust that one."""
        for folder in (self.cert.parent, self.trusted, self.rejected, self.crl):
            folder.mkdir(parents=True, exist_ok=True)
        host = socket.gethostname()
        asyncio.run(
            setup_self_signed_certificate(
                self.key,
                self.cert,
                self.application_uri,
                host,
                [ExtendedKeyUsageOID.CLIENT_AUTH],
                {
                    "countryName": "XX",
                    "organizationName": "edge-agent",
                    "commonName": f"edge-agent@{host}",
                },
            )
        )

    def reject(self, certificate: x509.Certificate) -> Path:
        """Keep a refused server certificate where the integrator can trust it from."""
        thumbprint = certificate.fingerprint(hashes.SHA1()).hex()
        name = _file_name(certificate.subject.rfc4514_string()) or "server"
        path = self.rejected / f"{name}-{thumbprint[:16]}.der"
        path.write_bytes(certificate.public_bytes(Encoding.DER))
        return path


async def apply(client: Client, device: OpcUaDevice) -> None:
    """Configure ``client`` for the device's policy, mode and identity; raise SecurityRefused
    with what to do when that cannot be done as configured."""
    if device.username is not None:
        client.set_user(device.username)
        if device.password is not None:
            client.set_password(device.password.get_secret_value())
    if device.user_certificate is not None and device.user_private_key is not None:
        certificate, key = await run_in_thread(
            f"pki:{device.name}",
            lambda: _user_identity(device.user_certificate or "", device.user_private_key or ""),
        )
        client.user_certificate, client.user_private_key = certificate, key
    if device.security_policy is SecurityPolicy.NONE:
        return
    pki = Pki(device)
    await run_in_thread(f"pki:{device.name}", pki.ensure)
    policy = POLICIES[device.security_policy]
    mode = MODES[device.security_mode]
    endpoints = await client.connect_and_get_server_endpoints()
    chosen = [e for e in endpoints if e.SecurityPolicyUri == policy.URI and e.SecurityMode == mode]
    if not chosen:
        kinds = {f"{e.SecurityPolicyUri.rsplit('#')[-1]} {e.SecurityMode.name}" for e in endpoints}
        offered = ", ".join(sorted(kinds))
        raise SecurityRefused(
            f"the server offers no {device.security_policy.value} {device.security_mode.value} "
            f"endpoint (it offers: {offered or 'nothing'}); the agent never connects with "
            "weaker security than configured"
        )
    endpoint = chosen[0]
    certificate = x509.load_der_x509_certificate(_first_certificate(endpoint.ServerCertificate))
    validator = await _validator(pki)
    try:
        if validator is None:  # nothing trusted yet: nothing can pass
            raise ServiceError(ua.StatusCodes.BadCertificateUntrusted)
        await validator.validate(certificate, endpoint.Server)
    except ServiceError as exc:
        kept = await run_in_thread(f"pki:{device.name}", lambda: pki.reject(certificate))
        why = ua.StatusCode(ua.UInt32(exc.code)).name
        raise SecurityRefused(
            f"the server certificate {certificate.subject.rfc4514_string()!r} is not accepted "
            f"({why}); if this is the right server, trust it: move {kept} to {pki.trusted}/"
        ) from exc
    client.certificate_validator = validator
    await client.set_security(
        policy,
        str(pki.cert),
        str(pki.key),
        server_certificate=_first_certificate(endpoint.ServerCertificate),
        mode=mode,
    )


def _user_identity(cert_path: str, key_path: str) -> tuple[x509.Certificate, Any]:
    """The user certificate (DER or PEM) and its key (PEM), read and parsed; a file that is
    missing or not what it should be is a SecurityRefused saying which."""
    try:
        cert_data, key_data = Path(cert_path).read_bytes(), Path(key_path).read_bytes()
    except OSError as exc:
        raise SecurityRefused(f"cannot read {exc.filename}: {exc.strerror}") from exc
    try:
        if cert_data.lstrip().startswith(b"-----BEGIN"):
            certificate = x509.load_pem_x509_certificate(cert_data)
        else:
            certificate = x509.load_der_x509_certificate(cert_data)
    except ValueError as exc:
        raise SecurityRefused(f"{cert_path} is not a certificate (DER or PEM)") from exc
    try:
        key = load_pem_private_key(key_data, password=None)
    except (ValueError, TypeError) as exc:
        raise SecurityRefused(f"{key_path} is not an unencrypted PEM private key") from exc
    return certificate, key


async def _validator(pki: Pki) -> CertificateValidator | None:
    """asyncua's validator over the trust list and revocation lists; None while trusted/ is
    empty (asyncua refuses to build an empty store)."""
    trusted, revoked = await run_in_thread(
        "pki:folders", lambda: (_has_files(pki.trusted), _has_files(pki.crl))
    )
    if not trusted:
        return None
    crl = [pki.crl] if revoked else []
    store = TrustStore([pki.trusted], crl)
    await store.load()
    return CertificateValidator(SERVER_CHECKS, store)


def _has_files(folder: Path) -> bool:
    return any(p.is_file() for p in folder.iterdir())


def _first_certificate(blob: bytes) -> bytes:
    """A server may send its certificate chain; the first DER element is its own."""
    if len(blob) < 4 or blob[0] != 0x30:
        return blob
    if blob[1] & 0x80:
        octets = blob[1] & 0x7F
        length = int.from_bytes(blob[2 : 2 + octets], "big")
        return blob[: 2 + octets + length]
    return blob[: 2 + blob[1]]


def _file_name(subject: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-_." else "_" for c in subject)
    return keep.strip("_")[:60]
