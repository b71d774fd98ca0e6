"""The power-cut filesystem as a process: a FUSE mount (through mfusepy, libfuse 3 via ctypes)
of :class:`~simulators.powercut.disk.PowerCutDisk`, and a control socket that cuts the power.

    python -m simulators.powercut.fs BACKING MOUNTPOINT --control SOCKET

Control requests are one JSON line each, answered by one JSON line:
``{"op": "ping"}`` (``mounted`` once the kernel has connected), ``{"op": "cut", "mode":
"drop"|"tear"|"reorder", "seed": 7}`` (now), ``{"op": "arm", "countdown": 3, "before": true,
"mode": ..., "seed": ...}`` (at the 4th coming fsync of unsynced data; the disk is then off
until ``{"op": "power_on"}``), ``{"op": "sync"}`` (everything reaches the disk, like
``sync(1)`` on a machine that ran long enough), ``{"op": "stats"}`` (``fired``: the armed
cut's report once it struck), ``{"op": "lie", "on": true}`` (fsync persists nothing: a disk
whose write cache lies, to show that the checks see what such a disk loses).

How the kernel is told to behave, and why:

- ``attr_timeout=0``, ``entry_timeout=0``, ``negative_timeout=0``: after a cut, sizes and
  names change under the kernel; it must ask again every time rather than trust its caches.
- ``kernel_cache`` (keep the page cache across opens) with ``mtime`` moving only at a cut:
  every write passes through the kernel, so its page cache is exact until a cut; the cut
  changes every node's ``mtime``, and libfuse's default ``auto_inval_data`` then drops the
  pages at the next lookup. Without it every ``open`` (each read-only check connection)
  would read the whole database through this process again.
- no ``direct_io`` and no ``writeback_cache``: writes reach this process when ``write(2)``
  returns (in order), and shared ``mmap`` works, which SQLite's WAL index (``-shm``) needs.
- POSIX locks and ``flock`` are not implemented here, so the kernel keeps them itself
  (correct for processes on one machine); a SIGKILLed process loses its locks as usual.
- ``hard_remove``: an unlinked open file stays reachable through its handle only (this model
  tracks handles), instead of libfuse renaming it to ``.fuse_hidden*``.
- ``auto_unmount``: if this process dies, ``fusermount3`` unmounts, so no dead mount is left.
"""

from __future__ import annotations

import argparse
import errno
import functools
import json
import logging
import os
import random
import socketserver
import stat
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from simulators.powercut.disk import CUT_MODES, PowerCutDisk

log = logging.getLogger(__name__)
T = TypeVar("T")


def _locked(method: Callable[..., T]) -> Callable[..., T]:
    @functools.wraps(method)
    def run(self: PowerCutOps, *args: Any) -> T:
        with self._guard:
            if not self.disk.powered:
                raise OSError(errno.EIO, "the power is off")
            return method(self, *args)

    return run


class PowerCutOps:
    """The FUSE operations (mfusepy's high-level API), each one call into the disk under one
    lock: the disk is not thread-safe, and a cut must not interleave with any operation.

    mfusepy registers every attribute named like a FUSE operation: an attribute ``lock``
    would take over POSIX locking (and fail every SQLite open), hence ``_guard``.
    """

    use_ns = True  # times in integer nanoseconds

    def __init__(self, disk: PowerCutDisk, lock: threading.Lock) -> None:
        self.disk = disk
        self._guard = lock
        self.mounted = threading.Event()

    def init(self, path: str) -> None:
        self.mounted.set()

    @_locked
    def getattr(self, path: str | None, fh: int | None = None) -> dict[str, int]:
        node = self.disk.lookup(path) if path is not None else self.disk.handle(fh or 0)
        return self.disk.attributes(node)

    @_locked
    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", "..", *self.disk.readdir(self.disk.lookup(path))]

    @_locked
    def mkdir(self, path: str, mode: int) -> int:
        self.disk.make(path, stat.S_IFDIR | stat.S_IMODE(mode))
        return 0

    @_locked
    def mknod(self, path: str, mode: int, dev: int) -> int:
        # Sockets (bind(2) of the agent's control socket) and plain files.
        self.disk.make(path, mode if stat.S_IFMT(mode) else stat.S_IFREG | mode)
        return 0

    @_locked
    def create(self, path: str, mode: int, flags: int = 0) -> int:
        try:
            node = self.disk.lookup(path)
        except FileNotFoundError:
            node = self.disk.make(path, stat.S_IFREG | stat.S_IMODE(mode))
        return self.disk.open(node)

    @_locked
    def open(self, path: str, flags: int) -> int:
        node = self.disk.lookup(path)
        if flags & os.O_TRUNC:
            self.disk.truncate(node, 0)
        return self.disk.open(node)

    @_locked
    def read(self, path: str | None, size: int, offset: int, fh: int) -> bytes:
        return self.disk.read(self.disk.handle(fh), size, offset)

    @_locked
    def write(self, path: str | None, data: bytes, offset: int, fh: int) -> int:
        return self.disk.write(self.disk.handle(fh), data, offset)

    @_locked
    def truncate(self, path: str | None, length: int, fh: int | None = None) -> int:
        node = self.disk.handle(fh) if fh else self.disk.lookup(path or "")
        self.disk.truncate(node, length)
        return 0

    @_locked
    def fsync(self, path: str | None, datasync: int, fh: int) -> int:
        self.disk.fsync(self.disk.handle(fh))
        return 0

    @_locked
    def fsyncdir(self, path: str | None, datasync: int, fh: int) -> int:
        self.disk.fsync(self.disk.lookup(path or "/"))
        return 0

    def flush(self, path: str | None, fh: int) -> int:
        return 0  # close(2) syncs nothing

    @_locked
    def release(self, path: str | None, fh: int) -> int:
        self.disk.release(fh)
        return 0

    @_locked
    def unlink(self, path: str) -> int:
        self.disk.unlink(path)
        return 0

    @_locked
    def rmdir(self, path: str) -> int:
        self.disk.unlink(path, directory=True)
        return 0

    @_locked
    def rename(self, old: str, new: str) -> int:
        self.disk.rename(old, new)
        return 0

    @_locked
    def chmod(self, path: str | None, mode: int) -> int:
        self.disk.chmod(self.disk.lookup(path or "/"), mode)
        return 0

    def chown(self, path: str | None, uid: int, gid: int) -> int:
        return 0

    def utimens(self, path: str | None, times: tuple[int, int] | None = None) -> int:
        return 0  # mtime is the cut's (see PowerCutDisk.attributes)

    def access(self, path: str, amode: int) -> int:
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        # The journal watches free space (disk_low/disk_critical): report the backing disk's.
        st = os.statvfs(self.disk.backing)
        return {
            key: getattr(st, key)
            for key in (
                "f_bsize",
                "f_frsize",
                "f_blocks",
                "f_bfree",
                "f_bavail",
                "f_files",
                "f_ffree",
                "f_favail",
                "f_namemax",
            )
        }


class _Control(socketserver.StreamRequestHandler):
    server: ControlServer

    def handle(self) -> None:
        for line in self.rfile:
            try:
                answer = self.server.answer(json.loads(line))
            except Exception as exc:  # a bad request is answered, never kills the filesystem
                answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            self.wfile.write(json.dumps(answer).encode() + b"\n")
            self.wfile.flush()


class ControlServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True

    def __init__(self, path: Path, ops: PowerCutOps) -> None:
        self.ops = ops
        path.unlink(missing_ok=True)
        super().__init__(str(path), _Control)

    def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "ping":
            return {"ok": True, "mounted": self.ops.mounted.is_set(), "pid": os.getpid()}
        disk = self.ops.disk
        with self.ops._guard:
            if op == "cut":
                mode = request.get("mode", "drop")
                if mode not in CUT_MODES:
                    return {"ok": False, "error": f"mode must be one of {', '.join(CUT_MODES)}"}
                disk.power_on()  # disarms: this cut is now, the caller stopped everyone
                return {"ok": True, **disk.cut(mode, random.Random(request.get("seed")))}
            if op == "arm":
                mode = request.get("mode", "drop")
                if mode not in CUT_MODES:
                    return {"ok": False, "error": f"mode must be one of {', '.join(CUT_MODES)}"}
                disk.arm(
                    int(request.get("countdown", 0)),
                    before=bool(request.get("before", True)),
                    mode=mode,
                    rng=random.Random(request.get("seed")),
                )
                return {"ok": True}
            if op == "lie":
                disk.lying = bool(request.get("on", True))
                return {"ok": True}
            if op == "power_on":
                disk.power_on()
                return {"ok": True}
            if op == "sync":
                disk.sync_all()
                return {"ok": True}
            if op == "stats":
                return {
                    "ok": True,
                    "cuts": disk.cuts,
                    "epoch": disk.epoch,
                    "powered": disk.powered,
                    "fired": disk.fired,
                    **disk.unsynced(),
                }
        return {"ok": False, "error": f"unknown op {op!r}"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("backing", type=Path, help="directory holding the disk's content")
    p.add_argument("mountpoint", type=Path)
    p.add_argument("--control", type=Path, required=True, help="Unix socket for power cuts")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="powercut-fs: %(levelname)s %(message)s")
    try:
        import mfusepy  # type: ignore[import-untyped]  # loads libfuse: absent -> OSError
    except (ImportError, OSError) as exc:
        print(f"powercut-fs: cannot load FUSE: {exc}", file=sys.stderr)
        return 3
    disk = PowerCutDisk(args.backing)
    lock = threading.Lock()
    ops = PowerCutOps(disk, lock)
    control = ControlServer(args.control, ops)
    thread = threading.Thread(target=control.serve_forever, name="powercut-control", daemon=True)
    thread.start()
    try:
        mfusepy.FUSE(
            ops,
            str(args.mountpoint),
            foreground=True,
            fsname="powercut",
            attr_timeout=0,
            entry_timeout=0,
            negative_timeout=0,
            hard_remove=True,
            kernel_cache=True,
            auto_unmount=True,
        )
    except RuntimeError as exc:  # fuse_main's status: the mount failed
        print(
            f"powercut-fs: cannot mount {args.mountpoint}: fuse_main returned {exc}",
            file=sys.stderr,
        )
        return 4
    finally:
        control.shutdown()
        control.server_close()
        args.control.unlink(missing_ok=True)
        disk.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
