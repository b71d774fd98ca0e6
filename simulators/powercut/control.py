"""Start, cut and stop a power-cut filesystem (``fs.py``) from a test or a benchmark.

    with PowerCutMount(tmp / "disk", tmp / "mnt") as mount:
        ...                            # processes use tmp/mnt
        mount.sync()                   # what exists so far survives (the machine ran a while)
        ...                            # stop (SIGSTOP/SIGKILL) every process using the mount
        mount.cut("tear", seed=7)      # the power goes: unsynced pages and entries are lost

Whoever used the mount must be stopped before :meth:`PowerCutMount.cut` and started again
after it: a cut is the instant the power goes, and any handle opened before it answers EIO
afterwards. :func:`unavailable` says why a mount cannot be made here (no ``/dev/fuse``, no
libfuse, no permission to mount), for a test to skip with that reason.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from simulators.powercut.disk import CutMode

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 15.0


class MountError(RuntimeError):
    """The filesystem could not be mounted; the message says why."""


class PowerCutMount:
    """One power-cut filesystem process: ``mountpoint`` shows ``backing`` (the disk)."""

    def __init__(
        self, backing: Path, mountpoint: Path, *, env: Mapping[str, str] | None = None
    ) -> None:
        self.backing = backing
        self.mountpoint = mountpoint
        self.env = {**os.environ, **(env or {}), "PYTHONPATH": str(REPO)}
        # The control socket and the log live in a short temporary folder made by start()
        # (a Unix socket path must stay under 108 bytes; pytest's tmp paths can be longer).
        self._control_dir: Path | None = None
        self.control = Path("/nonexistent/powercut/control.sock")  # until start()
        self.log = Path("/nonexistent/powercut/fs.log")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Mount, and return once the kernel has connected; :class:`MountError` if it can't."""
        if not Path("/dev/fuse").exists():
            raise MountError("/dev/fuse does not exist (no FUSE in this kernel or container)")
        self._control_dir = Path(tempfile.mkdtemp(prefix="powercut-"))
        self.control = self._control_dir / "control.sock"
        self.log = self._control_dir / "fs.log"
        try:
            self.backing.mkdir(parents=True, exist_ok=True)
            self.mountpoint.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self._cleanup()
            raise MountError(f"cannot make the mount point: {exc}") from exc
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "simulators.powercut.fs",
                    str(self.backing),
                    str(self.mountpoint),
                    "--control",
                    str(self.control),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=REPO,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                reason = self._log_tail() or f"exit status {self.proc.returncode}"
                self._cleanup()
                raise MountError(reason)
            with contextlib.suppress(OSError):
                if self.request({"op": "ping"}).get("mounted") and os.path.ismount(self.mountpoint):
                    return
            if time.monotonic() > deadline:
                reason = self._log_tail()
                self.stop()
                raise MountError(f"not mounted within {timeout:g} s: {reason}")
            time.sleep(0.02)

    def request(self, message: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(self.control))
            sock.sendall(json.dumps(message).encode() + b"\n")
            with sock.makefile("rb") as answer:
                reply: dict[str, Any] = json.loads(answer.readline())
        if not reply.get("ok"):
            raise RuntimeError(f"power-cut filesystem refused {message}: {reply.get('error')}")
        return reply

    def cut(self, mode: CutMode = "drop", seed: int | None = None) -> dict[str, Any]:
        """The power goes: what was not synced is lost (``mode``: see disk.py)."""
        return self.request({"op": "cut", "mode": mode, "seed": seed})

    def arm(self, countdown: int, *, before: bool, mode: CutMode, seed: int | None) -> None:
        """Cut at the ``countdown``-th coming fsync of unsynced data (before or after it takes
        effect); the disk then stays off (EIO) until :meth:`power_on`."""
        self.request(
            {"op": "arm", "countdown": countdown, "before": before, "mode": mode, "seed": seed}
        )

    def fired(self) -> dict[str, Any] | None:
        """The armed cut's report once it has struck, else ``None``."""
        fired: dict[str, Any] | None = self.stats().get("fired")
        return fired

    def lie(self, on: bool = True) -> None:
        """Make fsync persist nothing (a disk whose write cache ignores flushes)."""
        self.request({"op": "lie", "on": on})

    def power_on(self) -> None:
        self.request({"op": "power_on"})

    def sync(self) -> None:
        """Everything written so far reaches the disk (``sync(1)``)."""
        self.request({"op": "sync"})

    def stats(self) -> dict[str, Any]:
        return self.request({"op": "stats"})

    def stop(self) -> None:
        """Unmount (SIGTERM: libfuse unmounts and returns) and wait for the process."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if os.path.ismount(self.mountpoint):
            # A process that died without unmounting leaves a dead mount; detach it.
            for cmd in (["fusermount3", "-u", "-z"], ["umount", "-l"]):
                if os.path.ismount(self.mountpoint) and shutil.which(cmd[0]):
                    subprocess.run([*cmd, str(self.mountpoint)], check=False, capture_output=True)
        self._cleanup()

    def _cleanup(self) -> None:
        if self._control_dir is not None:
            shutil.rmtree(self._control_dir, ignore_errors=True)
            self._control_dir = None

    def _log_tail(self) -> str:
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        lines = [ln for ln in lines if ln.strip() and not ln.startswith("Ignoring invalid max")]
        return " / ".join(lines[-3:])

    def __enter__(self) -> PowerCutMount:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def unavailable(workdir: Path) -> str | None:
    """Why a power-cut filesystem cannot be mounted here, or ``None`` if it can (a probe
    mount in ``workdir`` is made and removed)."""
    probe = PowerCutMount(workdir / "probe-disk", workdir / "probe-mnt")
    try:
        probe.start()
    except MountError as exc:
        return f"cannot mount FUSE ({exc})"
    probe.stop()
    shutil.rmtree(workdir / "probe-disk", ignore_errors=True)
    with contextlib.suppress(OSError):
        (workdir / "probe-mnt").rmdir()
    return None
