"""What survives a power cut: a disk (durable, in a backing directory) under a page cache and
a directory cache (volatile, in memory), as a kernel keeps them.

Every change lands in memory first: file data as 4 KiB dirty pages, directory entries in the
volatile namespace. Only ``fsync``/``fdatasync`` of a file writes its dirty pages and size to
the disk, and only ``fsync`` of a directory writes that directory's entries (create, unlink,
rename) to the disk. A power cut (:meth:`PowerCutDisk.cut`) throws the memory away and the
next reader sees the disk:

- ``drop``: every unsynced page and directory change is lost;
- ``tear``: the same, but a prefix (whole 512-byte sectors) of the last page written reached
  the platter, as LazyFS's torn writes model a write interrupted mid-page;
- ``reorder``: every unsynced page independently reached the disk or not (a disk cache that
  writes back in any order but honours flushes), and the last one may be torn.

A cut can also be armed (:meth:`PowerCutDisk.arm`) to strike at the n-th coming ``fsync``
of a file with unsynced pages, just before it takes effect (the transaction's pages written,
none synced: the moment a torn write can hurt) or just after (durable, but its caller never
hears so). From then on the disk is off: every operation fails with EIO until
:meth:`PowerCutDisk.power_on`, so nothing running on it can write anything more, exactly as if
its machine had stopped; the harness then kills those processes and powers on.

Directory changes are never persisted without an fsync of their directory, in any mode.
That is stricter than ext4 (whose journal commits metadata in order, and whose ``fsync`` of a
new file commits its directory entry too) and what POSIX promises.

The disk: ``<backing>/namespace.json`` (each durable node's mode and, for directories, their
entries) and ``<backing>/data/<ino>`` (each file's durable bytes). It outlives the process, so
a mount over the same backing directory comes back with what was synced.

Not thread-safe: the FUSE adapter serialises every call (``fs.py``).
"""

from __future__ import annotations

import errno
import json
import os
import random
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

PAGE = 4096
SECTOR = 512
ROOT = 1
CutMode = Literal["drop", "tear", "reorder"]
CUT_MODES: tuple[CutMode, ...] = ("drop", "tear", "reorder")


def _error(code: int, what: str) -> OSError:
    return OSError(code, os.strerror(code), what)


@dataclass
class Node:
    """One inode as the kernel sees it now (the volatile view)."""

    ino: int
    mode: int  # st_mode, type bits included
    entries: dict[str, int] | None = None  # directories: name -> ino
    size: int = 0
    durable_size: int = 0  # bytes of data/<ino>
    # Durable bytes at or past ``floor`` read as zeros: the file was truncated below them since
    # its last sync (the disk still has them until then).
    floor: int = 0
    dirty: dict[int, bytearray] = field(default_factory=dict)  # page index -> page
    written: dict[int, int] = field(default_factory=dict)  # page index -> write order
    links: int = 1
    opens: int = 0
    mtime_ns: int = 0

    @property
    def is_dir(self) -> bool:
        return self.entries is not None


@dataclass
class Armed:
    countdown: int  # fsyncs of dirty files to let through first
    before: bool  # strike before the fsync takes effect (else just after it)
    mode: CutMode
    rng: random.Random


@dataclass(frozen=True)
class Handle:
    epoch: int
    ino: int


class PowerCutDisk:
    """The volatile filesystem over a durable backing directory; see the module docstring."""

    def __init__(self, backing: Path) -> None:
        self.backing = backing
        self.data_dir = backing / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.namespace_file = backing / "namespace.json"
        self.epoch = 0
        self.cuts = 0
        self._fds: dict[int, int] = {}
        self._handles: dict[int, Handle] = {}
        self._next_fh = 1
        self._write_order = 0
        self.powered = True
        self.lying = False  # fsync answers success and persists nothing (a lying disk cache)
        self.armed: Armed | None = None
        self.fired: dict[str, Any] | None = None  # the armed cut's report, once it struck
        self._durable: dict[int, dict[str, Any]] = self._load()
        self.nodes: dict[int, Node] = {}
        self._boot()

    # ---- the disk -----------------------------------------------------------------------------

    def _load(self) -> dict[int, dict[str, Any]]:
        if not self.namespace_file.exists():
            return {ROOT: {"mode": stat.S_IFDIR | 0o755, "entries": {}}}
        raw = json.loads(self.namespace_file.read_text())
        return {int(ino): node for ino, node in raw.items()}

    def _save(self) -> None:
        # The host under the backing directory never loses power, so no fsync here: this file
        # is the platter, not something that itself needs to survive a cut.
        tmp = self.namespace_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({str(k): v for k, v in self._durable.items()}))
        os.replace(tmp, self.namespace_file)

    def _fd(self, ino: int) -> int:
        fd = self._fds.get(ino)
        if fd is None:
            fd = os.open(self.data_dir / str(ino), os.O_RDWR | os.O_CREAT, 0o600)
            self._fds[ino] = fd
        return fd

    def _close_fds(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def _boot(self) -> None:
        """The volatile view becomes what the disk holds: after a mount or a power cut."""
        self._close_fds()
        reachable: set[int] = set()
        stack = [ROOT]
        while stack:
            ino = stack.pop()
            if ino in reachable or ino not in self._durable:
                continue
            reachable.add(ino)
            stack.extend(self._durable[ino].get("entries", {}).values())
        # What a power cut left unreachable is gone (fsck would free it).
        dropped = set(self._durable) - reachable
        for ino in dropped:
            del self._durable[ino]
        for entry in self._durable.values():
            if "entries" in entry:
                entry["entries"] = {n: i for n, i in entry["entries"].items() if i in self._durable}
        for name in os.listdir(self.data_dir):
            if not name.isdigit() or int(name) not in reachable:
                (self.data_dir / name).unlink()
        if dropped:
            self._save()
        now = time.time_ns()
        self.nodes = {}
        for ino, entry in self._durable.items():
            node = Node(ino=ino, mode=int(entry["mode"]), mtime_ns=now)
            if "entries" in entry:
                node.entries = dict(entry["entries"])
            else:
                path = self.data_dir / str(ino)
                node.size = node.durable_size = node.floor = (
                    path.stat().st_size if path.exists() else 0
                )
            self.nodes[ino] = node
        links: dict[int, int] = {}
        for node in self.nodes.values():
            for child in (node.entries or {}).values():
                links[child] = links.get(child, 0) + 1
        for ino, node in self.nodes.items():
            node.links = 1 if ino == ROOT else links.get(ino, 0)
        self._next_ino = max(self.nodes) + 1
        self._handles.clear()
        self.epoch += 1

    # ---- the namespace ------------------------------------------------------------------------

    def lookup(self, path: str) -> Node:
        node = self.nodes[ROOT]
        for part in _parts(path):
            if node.entries is None:
                raise _error(errno.ENOTDIR, path)
            ino = node.entries.get(part)
            if ino is None:
                raise _error(errno.ENOENT, path)
            node = self.nodes[ino]
        return node

    def _parent(self, path: str) -> tuple[Node, str]:
        parts = _parts(path)
        if not parts:
            raise _error(errno.EBUSY, path)
        parent = self.lookup("/".join(parts[:-1]))
        if parent.entries is None:
            raise _error(errno.ENOTDIR, path)
        return parent, parts[-1]

    def make(self, path: str, mode: int) -> Node:
        """Create a file, directory or socket (``mode`` carries the type)."""
        parent, name = self._parent(path)
        assert parent.entries is not None
        if name in parent.entries:
            raise _error(errno.EEXIST, path)
        node = Node(ino=self._next_ino, mode=mode, mtime_ns=time.time_ns())
        self._next_ino += 1
        if stat.S_ISDIR(mode):
            node.entries = {}
        self.nodes[node.ino] = node
        parent.entries[name] = node.ino
        return node

    def unlink(self, path: str, *, directory: bool = False) -> None:
        parent, name = self._parent(path)
        assert parent.entries is not None
        node = self.lookup(path)
        if directory:
            if not node.is_dir:
                raise _error(errno.ENOTDIR, path)
            if node.entries:
                raise _error(errno.ENOTEMPTY, path)
        elif node.is_dir:
            raise _error(errno.EISDIR, path)
        del parent.entries[name]
        node.links -= 1
        self._forget_if_unused(node)

    def rename(self, old: str, new: str) -> None:
        src_parent, src_name = self._parent(old)
        dst_parent, dst_name = self._parent(new)
        assert src_parent.entries is not None
        assert dst_parent.entries is not None
        node = self.lookup(old)
        replaced = dst_parent.entries.get(dst_name)
        if replaced == node.ino:
            return
        if replaced is not None:
            target = self.nodes[replaced]
            if target.is_dir and (not node.is_dir or target.entries):
                raise _error(errno.ENOTEMPTY if target.entries else errno.EISDIR, new)
            if node.is_dir and not target.is_dir:
                raise _error(errno.ENOTDIR, new)
            target.links -= 1
            self._forget_if_unused(target)
        del src_parent.entries[src_name]
        dst_parent.entries[dst_name] = node.ino

    def _forget_if_unused(self, node: Node) -> None:
        if node.links <= 0 and node.opens <= 0:
            self.nodes.pop(node.ino, None)

    def readdir(self, node: Node) -> list[str]:
        if node.entries is None:
            raise _error(errno.ENOTDIR, str(node.ino))
        return list(node.entries)

    def chmod(self, node: Node, mode: int) -> None:
        node.mode = stat.S_IFMT(node.mode) | stat.S_IMODE(mode)

    def attributes(self, node: Node) -> dict[str, int]:
        return {
            "st_ino": node.ino,
            "st_mode": node.mode,
            "st_nlink": (2 + sum(self.nodes[i].is_dir for i in node.entries.values()))
            if node.entries is not None
            else max(node.links, 0),
            "st_size": node.size if node.entries is None else PAGE,
            "st_blocks": (node.size + SECTOR - 1) // SECTOR,
            "st_uid": os.getuid(),
            "st_gid": os.getgid(),
            # mtime moves only at a power cut: the kernel keeps its page cache while mtime and
            # size are unchanged (every write passes through it, so it is coherent until the
            # cut), and drops it when a cut changes them under it.
            "st_mtime": node.mtime_ns,
            "st_ctime": node.mtime_ns,
            "st_atime": node.mtime_ns,
        }

    # ---- open files ---------------------------------------------------------------------------

    def open(self, node: Node) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = Handle(self.epoch, node.ino)
        node.opens += 1
        return fh

    def handle(self, fh: int) -> Node:
        """The node behind ``fh``; EIO for a handle opened before the last power cut."""
        h = self._handles.get(fh)
        if h is None or h.epoch != self.epoch or h.ino not in self.nodes:
            raise _error(errno.EIO, f"handle {fh} is from before the power cut")
        return self.nodes[h.ino]

    def release(self, fh: int) -> None:
        h = self._handles.pop(fh, None)
        if h is None or h.epoch != self.epoch:
            return
        node = self.nodes.get(h.ino)
        if node is not None:
            node.opens -= 1
            self._forget_if_unused(node)

    # ---- file data ----------------------------------------------------------------------------

    def read(self, node: Node, size: int, offset: int) -> bytes:
        end = min(offset + size, node.size)
        if end <= offset:
            return b""
        out = bytearray(end - offset)
        visible = min(node.durable_size, node.floor)
        if offset < visible:
            chunk = os.pread(self._fd(node.ino), min(end, visible) - offset, offset)
            out[: len(chunk)] = chunk
        for index in range(offset // PAGE, (end - 1) // PAGE + 1):
            page = node.dirty.get(index)
            if page is None:
                continue
            lo, hi = max(offset, index * PAGE), min(end, (index + 1) * PAGE)
            out[lo - offset : hi - offset] = page[lo - index * PAGE : hi - index * PAGE]
        return bytes(out)

    def _page(self, node: Node, index: int) -> bytearray:
        page = node.dirty.get(index)
        if page is None:
            page = bytearray(PAGE)
            start = index * PAGE
            visible = min(node.durable_size, node.floor, node.size)
            if start < visible:
                chunk = os.pread(self._fd(node.ino), min(PAGE, visible - start), start)
                page[: len(chunk)] = chunk
            node.dirty[index] = page
        return page

    def write(self, node: Node, data: bytes, offset: int) -> int:
        end = offset + len(data)
        for index in range(offset // PAGE, (end - 1) // PAGE + 1 if data else offset // PAGE):
            page = self._page(node, index)
            lo, hi = max(offset, index * PAGE), min(end, (index + 1) * PAGE)
            page[lo - index * PAGE : hi - index * PAGE] = data[lo - offset : hi - offset]
            self._write_order += 1
            node.written[index] = self._write_order
        node.size = max(node.size, end)
        return len(data)

    def truncate(self, node: Node, length: int) -> None:
        if node.is_dir:
            raise _error(errno.EISDIR, str(node.ino))
        if length < node.size:
            for index in [i for i in node.dirty if i * PAGE >= length]:
                del node.dirty[index]
                node.written.pop(index, None)
            tail = node.dirty.get(length // PAGE)
            if tail is not None:
                tail[length % PAGE :] = bytes(PAGE - length % PAGE)
            node.floor = min(node.floor, length)
        node.size = length

    # ---- durability ---------------------------------------------------------------------------

    def fsync(self, node: Node) -> None:
        """``fsync``/``fdatasync`` of a file: its data and size reach the disk. For a
        directory: its entries do (and the nodes they name, with empty data until synced).
        An armed cut may strike here (then EIO)."""
        armed = self.armed
        if armed is not None and node.entries is None and node.dirty:
            if armed.countdown > 0:
                armed.countdown -= 1
            else:
                if not armed.before:
                    self._fsync(node)
                self.armed = None
                self.fired = {"before_fsync": armed.before, **self.cut(armed.mode, armed.rng)}
                self.powered = False
                raise _error(errno.EIO, "the power went")
        if not self.lying:
            self._fsync(node)

    def arm(self, countdown: int, *, before: bool, mode: CutMode, rng: random.Random) -> None:
        """Cut at the ``countdown``-th coming fsync of a file with unsynced pages (0: the
        next one), and leave the disk off (see the module docstring)."""
        self.armed = Armed(countdown, before, mode, rng)
        self.fired = None

    def power_on(self) -> None:
        self.armed = None
        self.powered = True

    def _fsync(self, node: Node) -> None:
        if node.entries is not None:
            self._sync_dir(node)
            return
        fd = self._fd(node.ino)
        if node.floor < node.durable_size:
            os.ftruncate(fd, node.floor)
        for index, page in node.dirty.items():
            valid = min(PAGE, node.size - index * PAGE)
            if valid > 0:
                os.pwrite(fd, page[:valid], index * PAGE)
        os.ftruncate(fd, node.size)
        node.dirty.clear()
        node.written.clear()
        node.durable_size = node.floor = node.size
        entry = self._durable.get(node.ino)
        if entry is not None and entry["mode"] != node.mode:
            entry["mode"] = node.mode
            self._save()

    def _sync_dir(self, node: Node) -> None:
        assert node.entries is not None
        entry = self._durable.setdefault(node.ino, {"mode": node.mode, "entries": {}})
        entry["mode"] = node.mode
        entry["entries"] = dict(node.entries)
        for ino in node.entries.values():
            if ino not in self._durable:
                child = self.nodes[ino]
                # A new subdirectory is durable empty: its own entries need its own fsync.
                self._durable[ino] = (
                    {"mode": child.mode, "entries": {}} if child.is_dir else {"mode": child.mode}
                )
        self._save()

    def sync_all(self) -> None:
        """``sync`` of everything (what a machine that ran long enough has done)."""
        for node in list(self.nodes.values()):
            if node.entries is None:
                self.fsync(node)
        # Parents before children, so every directory's new subdirectories are recorded.
        order, stack, seen = [], [ROOT], set()
        while stack:
            ino = stack.pop()
            if ino in seen:
                continue
            seen.add(ino)
            order.append(ino)
            stack.extend(
                i for i in (self.nodes[ino].entries or {}).values() if self.nodes[i].is_dir
            )
        for ino in order:
            self._sync_dir(self.nodes[ino])

    def unsynced(self) -> dict[str, int]:
        pages = sum(len(n.dirty) for n in self.nodes.values())
        changed = sum(
            1
            for n in self.nodes.values()
            if n.entries is not None and n.entries != self._durable.get(n.ino, {}).get("entries")
        )
        return {"dirty_pages": pages, "unsynced_directories": changed}

    def cut(self, mode: CutMode = "drop", rng: random.Random | None = None) -> dict[str, Any]:
        """Power cut: what was not synced is lost (see the module docstring for ``mode``)."""
        rng = rng or random.Random()
        report: dict[str, Any] = {"mode": mode, **self.unsynced(), "persisted_pages": 0}
        pages = [
            (node.written.get(index, 0), node, index)
            for node in self.nodes.values()
            for index in node.dirty
        ]
        pages.sort(key=lambda p: p[0])
        if mode == "reorder":
            for _order, node, index in pages[:-1]:
                if rng.random() < 0.5:
                    self._persist(node, index, PAGE)
                    report["persisted_pages"] += 1
        if mode in ("tear", "reorder") and pages:
            _order, node, index = pages[-1]
            sectors = rng.randrange(1, PAGE // SECTOR)
            self._persist(node, index, sectors * SECTOR)
            report["torn"] = {"ino": node.ino, "offset": index * PAGE, "bytes": sectors * SECTOR}
        self.cuts += 1
        self._boot()
        report["epoch"] = self.epoch
        return report

    def _persist(self, node: Node, index: int, length: int) -> None:
        """``length`` bytes of a dirty page reached the platter, unsynced."""
        if node.ino not in self._durable:
            return  # its directory entry is not durable: nothing on disk can reach it
        valid = min(length, node.size - index * PAGE)
        if valid > 0:
            os.pwrite(self._fd(node.ino), node.dirty[index][:valid], index * PAGE)

    def close(self) -> None:
        self._close_fds()


def _parts(path: str) -> list[str]:
    return [p for p in path.split("/") if p]
