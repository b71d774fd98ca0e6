"""asyncua's exceptions as messages an integrator can act on.

asyncua raises status code errors named after the code, timeouts, socket errors, and in
2.1 a bare ``AssertionError`` when the server closes the channel because it refused the
agent's certificate. Each becomes one sentence saying what happened and what to do.
"""

from __future__ import annotations

from pathlib import Path

from asyncua import ua

from drivers.opcua.config import OpcUaDevice
from drivers.opcua.security import SecurityRefused

_USER = frozenset(
    {
        "BadUserAccessDenied",
        "BadIdentityTokenRejected",
        "BadIdentityTokenInvalid",
        "BadUserSignatureInvalid",
    }
)
_OUR_CERTIFICATE = frozenset(
    {
        "BadCertificateUntrusted",
        "BadSecurityChecksFailed",
        "BadCertificateInvalid",
        "BadCertificateUriInvalid",
        "BadCertificateUseNotAllowed",
        "BadCertificateTimeInvalid",
    }
)


def describe(exc: BaseException, device: OpcUaDevice) -> str:
    """One sentence for ``exc``, raised while talking to ``device``."""
    where = device.endpoint
    if isinstance(exc, SecurityRefused):
        return str(exc)
    if isinstance(exc, ua.UaStatusCodeError):
        name = ua.StatusCode(ua.UInt32(exc.code)).name
        if name in _USER:
            if device.user_certificate is not None:
                return (
                    f"the server refused the user certificate {device.user_certificate} "
                    f"({name}): register it as a user on the server"
                )
            who = f"user {device.username!r}" if device.username else "an anonymous session"
            return f"the server refused {who} ({name}): check username and password"
        if name in _OUR_CERTIFICATE:
            return _refused_certificate(device, name)
        return f"{where}: {name}"
    if isinstance(exc, AssertionError) and device.security_policy.value != "None":
        # asyncua 2.1 asserts on the server's closing message when it refuses our certificate.
        return _refused_certificate(device, "the server closed the channel")
    if isinstance(exc, TimeoutError):
        return f"{where}: no answer within {device.timeout:g}s"
    if isinstance(exc, ConnectionRefusedError):
        return f"connection to {where} refused (server down, or another port?)"
    if isinstance(exc, OSError):
        return f"cannot connect to {where}: {exc.strerror or exc}"
    return f"{where}: {type(exc).__name__}: {exc}"


def _refused_certificate(device: OpcUaDevice, why: str) -> str:
    cert = Path(device.pki) / "own" / "cert.der"
    return (
        f"the server refused the agent's certificate ({why}): trust {cert} on the server "
        "(copy it into the server's trusted client certificates)"
    )
