"""OPC UA security against the OPC UA station simulator (a real asyncua server): signed and
encrypted sessions after trusting both ways, every policy and mode, a wrong password, a
refused certificate that says which file to trust, user certificates, and security that is
never downgraded."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("asyncua")

from asyncua import ua

from drivers.opcua.config import OpcUaDevice
from drivers.opcua.driver import OpcUaDriver
from kernel.errors import ConnectError
from kernel.model import DeviceState
from simulators.opcua.security import NONE_ONLY, SECURE_POLICIES
from simulators.opcua_server import OpcUaStationServer
from simulators.station import StationModel
from tests.modbus_helpers import Collector
from tests.modbus_helpers import start_device as run
from tests.modbus_helpers import stop_task as stop
from tests.opcua_helpers import device, good
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(180)


# ---- security --------------------------------------------------------------------------------


@pytest.fixture
async def secure_server(tmp_path: Path) -> AsyncIterator[OpcUaStationServer]:
    sims = [StationModel(unit_id=1, serial_prefix="S-")]
    async with OpcUaStationServer(
        sims,
        security=SECURE_POLICIES,
        users={"agent": "s3cret"},
        anonymous=False,
        trust_dir=tmp_path / "server-trusts",
        pki_dir=tmp_path / "server-pki",
    ) as server:
        yield server


def secure_device(server: OpcUaStationServer, tmp_path: Path, **kw: Any) -> OpcUaDevice:
    return device(
        server.endpoint,
        security_policy=kw.pop("policy", "Basic256Sha256"),
        security_mode=kw.pop("mode", "SignAndEncrypt"),
        pki=str(tmp_path / "pki"),
        username="agent",
        password=kw.pop("password", "s3cret"),
        **kw,
    )


async def connect_once(dev: OpcUaDevice) -> str | None:
    """None when the device opens, else the ConnectError's message."""
    driver = OpcUaDriver(dev)
    try:
        await driver.open()
    except ConnectError as exc:
        return str(exc)
    finally:
        await driver.close()
    return None


async def trust_both_ways(server: OpcUaStationServer, dev: OpcUaDevice, tmp_path: Path) -> None:
    """What an integrator does once: the first attempt creates the agent's certificate and
    refuses the server's; move the server's to trusted/, copy the agent's to the server."""
    refused = await connect_once(dev)
    assert refused is not None
    assert (
        "is not accepted (BadCertificateUntrusted); if this is the right server, trust it"
        in refused
    )
    (rejected,) = (tmp_path / "pki" / "rejected").iterdir()
    assert f"move {rejected} to {tmp_path / 'pki' / 'trusted'}/" in refused
    shutil.move(rejected, tmp_path / "pki" / "trusted" / rejected.name)
    (tmp_path / "server-trusts").mkdir(exist_ok=True)
    shutil.copy(tmp_path / "pki" / "own" / "cert.der", tmp_path / "server-trusts" / "agent.der")


async def test_signed_and_encrypted_with_a_user_after_trusting_both_ways(
    secure_server: OpcUaStationServer, tmp_path: Path
) -> None:
    dev = secure_device(secure_server, tmp_path)
    await trust_both_ways(secure_server, dev, tmp_path)
    driver = OpcUaDriver(dev)
    sink = Collector()
    task = await run(driver, sink)
    try:
        await wait_until(lambda: good(sink, "part_serial"), what="a value over the secure channel")
    finally:
        await stop(task)
    assert str(good(sink, "part_serial")[0]).startswith("S-")


async def test_a_secure_device_started_before_its_server_connects_once_it_is_there(
    secure_server: OpcUaStationServer, tmp_path: Path
) -> None:
    """The line PC boots before the PLC: the first connect fails (down, retried with
    backoff) and the secure session is made once the server answers, neither downgraded
    nor stuck."""
    dev = secure_device(secure_server, tmp_path, backoff_initial=0.05, backoff_max=0.3)
    await trust_both_ways(secure_server, dev, tmp_path)
    await secure_server.stop()
    driver = OpcUaDriver(dev)
    sink = Collector()
    task = await run(driver, sink)
    try:
        await wait_until(lambda: driver.status.reconnects >= 2, what="two refused attempts")
        assert driver.status.state is DeviceState.DOWN
        assert "refused" in (driver.status.last_error or "")
        assert not good(sink, "part_serial")
        await secure_server.start()
        await wait_until(
            lambda: good(sink, "part_serial"), within=30, what="a value once the server is up"
        )
        assert driver.status.state is DeviceState.UP
        client = driver._client
        assert client is not None
        assert client.security_policy.Mode == ua.MessageSecurityMode.SignAndEncrypt
    finally:
        await stop(task)


@pytest.mark.parametrize(
    ("policy", "mode"),
    [
        (p, m)
        for p in ("Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss")
        for m in ("Sign", "SignAndEncrypt")
    ],
)
async def test_every_policy_and_mode_connects(
    secure_server: OpcUaStationServer, tmp_path: Path, policy: str, mode: str
) -> None:
    dev = secure_device(secure_server, tmp_path, policy=policy, mode=mode)
    await trust_both_ways(secure_server, dev, tmp_path)
    assert await connect_once(dev) is None


async def test_a_wrong_password_says_so(secure_server: OpcUaStationServer, tmp_path: Path) -> None:
    dev = secure_device(secure_server, tmp_path)
    await trust_both_ways(secure_server, dev, tmp_path)
    wrong = secure_device(secure_server, tmp_path, password="guess")
    assert await connect_once(wrong) == (
        "device 'press1': the server refused user 'agent' (BadUserAccessDenied): check "
        "username and password"
    )


async def test_a_refused_agent_certificate_says_which_file_to_trust(
    secure_server: OpcUaStationServer, tmp_path: Path
) -> None:
    dev = secure_device(secure_server, tmp_path)
    await trust_both_ways(secure_server, dev, tmp_path)
    (tmp_path / "server-trusts" / "agent.der").unlink()
    message = await connect_once(dev)
    assert message is not None
    assert "the server refused the agent's certificate" in message
    assert f"trust {tmp_path / 'pki' / 'own' / 'cert.der'} on the server" in message


async def test_security_is_never_downgraded(tmp_path: Path) -> None:
    """The server offers only None; the config asks for SignAndEncrypt: refused, saying what
    the server offers, never connected insecurely."""
    sims = [StationModel(unit_id=1)]
    async with OpcUaStationServer(sims, security=NONE_ONLY) as server:
        dev = device(
            server.endpoint,
            security_policy="Basic256Sha256",
            security_mode="SignAndEncrypt",
            pki=str(tmp_path / "pki"),
        )
        message = await connect_once(dev)
    assert message == (
        "device 'press1': the server offers no Basic256Sha256 SignAndEncrypt endpoint (it "
        "offers: None None_); the agent never connects with weaker security than configured"
    )


def user_identity(folder: Path, name: str) -> tuple[Path, Path, bytes]:
    """A self-signed user certificate (DER) and its key (PEM), as an IT department issues."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    der = cert.public_bytes(serialization.Encoding.DER)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.der").write_bytes(der)
    (folder / f"{name}.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return folder / f"{name}.der", folder / f"{name}.pem", der


async def test_a_user_certificate_identity_is_accepted_and_an_unknown_one_refused(
    tmp_path: Path,
) -> None:
    known_cert, known_key, known_der = user_identity(tmp_path / "ids", "line3-user")
    other_cert, other_key, _ = user_identity(tmp_path / "ids", "someone-else")
    sims = [StationModel(unit_id=1, serial_prefix="X-")]
    async with OpcUaStationServer(
        sims,
        security=SECURE_POLICIES,
        anonymous=False,
        user_certificates=[known_der],
        trust_dir=tmp_path / "server-trusts",
        pki_dir=tmp_path / "server-pki",
    ) as server:

        def dev(cert: Path, key: Path) -> OpcUaDevice:
            return device(
                server.endpoint,
                security_policy="Basic256Sha256",
                security_mode="SignAndEncrypt",
                pki=str(tmp_path / "pki"),
                user_certificate=str(cert),
                user_private_key=str(key),
            )

        await trust_both_ways(server, dev(known_cert, known_key), tmp_path)
        assert await connect_once(dev(known_cert, known_key)) is None
        refused = await connect_once(dev(other_cert, other_key))
    assert refused is not None
    assert f"the server refused the user certificate {other_cert}" in refused
    assert "register it as a user on the server" in refused
