"""The power-cut filesystem (simulators/powercut/): a real FUSE mount whose unsynced pages and
directory changes are lost at a simulated power cut, and SQLite (WAL, synchronous=FULL) on it.

Every test mounts it for real; where FUSE cannot be mounted (no /dev/fuse, no libfuse, no
permission) they are skipped with the reason, which the first test states on its own.
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from simulators.powercut.control import MountError, PowerCutMount, unavailable
from simulators.powercut.disk import PAGE, SECTOR, CutMode

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def fuse_unavailable(tmp_path_factory: pytest.TempPathFactory) -> str | None:
    return unavailable(tmp_path_factory.mktemp("fuse-probe"))


@pytest.fixture
def mount(tmp_path: Path, fuse_unavailable: str | None) -> Iterator[PowerCutMount]:
    if fuse_unavailable:
        pytest.skip(fuse_unavailable)
    m = PowerCutMount(tmp_path / "disk", tmp_path / "mnt")
    m.start()
    try:
        yield m
    finally:
        m.stop()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write(path: Path, data: bytes, *, offset: int = 0, sync: bool) -> None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, data, offset)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def folder(mount: PowerCutMount) -> Path:
    """A directory that exists on the disk (synced), as a data folder made at install time."""
    d = mount.mountpoint / "data"
    d.mkdir()
    mount.sync()
    return d


def test_the_power_cut_filesystem_mounts_here(tmp_path: Path) -> None:
    reason = unavailable(tmp_path)
    if reason:
        pytest.skip(reason)


def test_a_mount_that_cannot_be_made_says_why(tmp_path: Path) -> None:
    no_libfuse = PowerCutMount(
        tmp_path / "disk", tmp_path / "mnt", env={"FUSE_LIBRARY_PATH": "/nonexistent.so"}
    )
    with pytest.raises(MountError, match="cannot load FUSE"):
        no_libfuse.start()
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(MountError, match="cannot make the mount point"):
        PowerCutMount(tmp_path / "disk", blocker / "mnt").start()


def test_synced_data_survives_a_cut_unsynced_data_does_not(mount: PowerCutMount) -> None:
    d = folder(mount)
    write(d / "f", b"A" * 10_000, sync=True)
    fsync_dir(d)
    write(d / "f", b"B" * 5_000, offset=10_000, sync=False)  # close(2) does not sync
    assert (d / "f").stat().st_size == 15_000
    report = mount.cut("drop")
    assert report["dirty_pages"] >= 2
    assert (d / "f").read_bytes() == b"A" * 10_000


def test_a_torn_write_leaves_a_sector_aligned_prefix_of_the_last_page(
    mount: PowerCutMount,
) -> None:
    d = folder(mount)
    write(d / "f", b"A" * (2 * PAGE), sync=True)
    fsync_dir(d)
    write(d / "f", b"B" * PAGE, offset=PAGE, sync=False)
    report = mount.cut("tear", seed=3)
    torn = report["torn"]["bytes"]
    assert torn % SECTOR == 0
    assert 0 < torn < PAGE
    assert (d / "f").read_bytes() == b"A" * PAGE + b"B" * torn + b"A" * (PAGE - torn)


def test_reorder_lets_any_subset_of_unsynced_pages_through_whole(mount: PowerCutMount) -> None:
    d = folder(mount)
    pages = 16
    write(d / "f", b"A" * (pages * PAGE), sync=True)
    fsync_dir(d)
    for i in range(pages):  # page by page, so the last written (the one torn) is the last
        write(d / "f", b"B" * PAGE, offset=i * PAGE, sync=False)
    report = mount.cut("reorder", seed=11)
    data = (d / "f").read_bytes()
    assert len(data) == pages * PAGE
    whole = [data[i * PAGE : (i + 1) * PAGE] for i in range(pages - 1)]
    assert all(p in (b"A" * PAGE, b"B" * PAGE) for p in whole)
    assert 0 < sum(p == b"B" * PAGE for p in whole) < pages - 1  # seed 11: some, not all
    assert report["persisted_pages"] == sum(p == b"B" * PAGE for p in whole)
    torn = report["torn"]["bytes"]
    assert data[(pages - 1) * PAGE :] == b"B" * torn + b"A" * (PAGE - torn)


def test_directory_changes_are_lost_until_the_directory_is_synced(
    mount: PowerCutMount,
) -> None:
    d = folder(mount)
    for name in ("keep", "gone", "old"):
        write(d / name, name.encode(), sync=True)
    fsync_dir(d)
    # Before a directory fsync: create, unlink and rename are all undone by the cut.
    write(d / "new", b"new", sync=True)  # the file's own fsync does not make its name durable
    (d / "gone").unlink()
    (d / "old").rename(d / "renamed")
    mount.cut("drop")
    assert sorted(os.listdir(d)) == ["gone", "keep", "old"]
    # After it: they stay.
    write(d / "new", b"new", sync=True)
    (d / "gone").unlink()
    (d / "old").rename(d / "renamed")
    fsync_dir(d)
    mount.cut("drop")
    assert sorted(os.listdir(d)) == ["keep", "new", "renamed"]
    assert (d / "renamed").read_bytes() == b"old"
    assert (d / "new").read_bytes() == b"new"


def test_a_created_name_synced_without_its_data_comes_back_empty(mount: PowerCutMount) -> None:
    d = folder(mount)
    write(d / "f", b"data", sync=False)
    fsync_dir(d)
    mount.cut("drop")
    assert (d / "f").read_bytes() == b""


def test_a_truncation_is_lost_unless_synced(mount: PowerCutMount) -> None:
    d = folder(mount)
    write(d / "f", b"A" * 3 * PAGE, sync=True)
    fsync_dir(d)
    os.truncate(d / "f", 100)
    write(d / "f", b"B", offset=2 * PAGE, sync=False)  # reads back zeros in between
    assert (d / "f").read_bytes() == b"A" * 100 + bytes(2 * PAGE - 100) + b"B"
    mount.cut("drop")
    assert (d / "f").read_bytes() == b"A" * 3 * PAGE
    fd = os.open(d / "f", os.O_RDWR)
    os.ftruncate(fd, 100)
    os.fsync(fd)
    os.close(fd)
    mount.cut("drop")
    assert (d / "f").read_bytes() == b"A" * 100


def test_handles_from_before_a_cut_answer_eio(mount: PowerCutMount) -> None:
    d = folder(mount)
    write(d / "f", b"A", sync=True)
    fsync_dir(d)
    fd = os.open(d / "f", os.O_RDWR)
    try:
        mount.cut("drop")
        with pytest.raises(OSError, match="Input/output error"):
            os.pwrite(fd, b"B", 0)
        with pytest.raises(OSError, match="Input/output error"):
            os.fsync(fd)
    finally:
        os.close(fd)
    assert (d / "f").read_bytes() == b"A"


@pytest.mark.parametrize("before", [True, False], ids=["before-fsync", "after-fsync"])
def test_an_armed_cut_strikes_at_the_chosen_fsync_and_leaves_the_disk_off(
    mount: PowerCutMount, before: bool
) -> None:
    d = folder(mount)
    write(d / "f", b"", sync=True)
    fsync_dir(d)
    mount.arm(1, before=before, mode="drop", seed=1)
    fd = os.open(d / "f", os.O_RDWR)
    try:
        os.pwrite(fd, b"1", 0)
        os.fsync(fd)  # the first one goes through
        os.pwrite(fd, b"2", 1)
        with pytest.raises(OSError, match="Input/output error"):
            os.fsync(fd)  # the second: the power goes (the caller never hears it worked)
        fired = mount.fired()
        assert fired is not None
        assert fired["before_fsync"] is before
        with pytest.raises(OSError, match="Input/output error"):
            os.listdir(d)  # the disk is off for everyone until it is powered on
    finally:
        os.close(fd)
    mount.power_on()
    assert (d / "f").read_bytes() == (b"1" if before else b"12")


def test_locks_and_unix_sockets_work_on_the_mount(mount: PowerCutMount) -> None:
    d = folder(mount)
    # flock (the journal's lock file): exclusive across open file descriptions.
    a = os.open(d / "x.lock", os.O_RDWR | os.O_CREAT)
    b = os.open(d / "x.lock", os.O_RDWR)
    try:
        fcntl.flock(a, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(BlockingIOError):
            fcntl.flock(b, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # POSIX record locks (SQLite's): exclusive across processes.
        fcntl.lockf(a, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 100)
        probe = (
            "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR)\n"
            "try: fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 100)\n"
            "except OSError: sys.exit(7)\n"
        )
        done = subprocess.run([sys.executable, "-c", probe, str(d / "x.lock")], check=False)
        assert done.returncode == 7
    finally:
        os.close(a)
        os.close(b)
    # The agent's control socket lives next to its journal.
    with socket.socket(socket.AF_UNIX) as server, socket.socket(socket.AF_UNIX) as client:
        server.bind(str(d / "x.sock"))
        server.listen()
        client.connect(str(d / "x.sock"))
        conn, _ = server.accept()
        with conn:
            client.sendall(b"ok")
            assert conn.recv(2) == b"ok"


WRITER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
assert db.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
db.execute("PRAGMA synchronous=" + sys.argv[2])
db.execute("CREATE TABLE IF NOT EXISTS t (n INTEGER PRIMARY KEY, pad BLOB)")
n = db.execute("SELECT coalesce(max(n), 0) FROM t").fetchone()[0]
while True:
    n += 1
    db.execute("BEGIN")
    db.executemany("INSERT INTO t VALUES (?, randomblob(700))", [(n,)])
    db.execute("COMMIT")
    if n % 97 == 0:
        db.execute("PRAGMA wal_checkpoint(PASSIVE)")  # pages overwritten in place, too
    print(n, flush=True)
"""


@pytest.mark.parametrize("mode", ["drop", "tear", "reorder"])
def test_sqlite_wal_full_keeps_every_commit_through_power_cuts(
    mount: PowerCutMount, mode: CutMode
) -> None:
    """A writer process commits one row at a time and says so after each commit; cut at
    random moments (now, or at an fsync), it must find every row it said was committed."""
    d = folder(mount)
    db = d / "t.db"
    for cut in range(6):
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(db), "FULL"], stdout=subprocess.PIPE, text=True
        )
        assert writer.stdout is not None
        said = 0
        for _ in range(40 + 17 * cut):
            said = int(writer.stdout.readline())
        if cut % 3:
            mount.arm(cut % 4, before=cut % 2 == 0, mode=mode, seed=cut)
            # The writer goes on until its disk answers EIO (and it dies of it).
            for line in writer.stdout:
                said = int(line)
            assert mount.fired() is not None
        else:
            writer.send_signal(signal.SIGSTOP)
            mount.cut(mode, seed=cut)
        writer.kill()
        writer.wait(30)  # a writer stuck in the FUSE mount would hang here
        said = max([said, *(int(n) for n in writer.stdout.read().split())])
        writer.stdout.close()
        mount.power_on()
        with sqlite3.connect(db) as check:
            assert check.execute("PRAGMA quick_check").fetchone() == ("ok",)
            count, top = check.execute("SELECT count(*), max(n) FROM t").fetchone()
        check.close()
        assert top >= said, f"cut {cut}: committed {said}, found {top}"
        assert count == top  # no holes either


def test_sqlite_wal_normal_loses_commits_at_a_power_cut(mount: PowerCutMount) -> None:
    """What the filesystem tells apart: with synchronous=NORMAL a WAL commit is not synced
    (only checkpoints are), so commits the writer was told about are gone after a cut."""
    db = folder(mount) / "t.db"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(db), "NORMAL"], stdout=subprocess.PIPE, text=True
    )
    assert writer.stdout is not None
    for _ in range(40):  # before the writer's first checkpoint (at 97)
        said = int(writer.stdout.readline())
    writer.send_signal(signal.SIGSTOP)
    mount.cut("drop")
    writer.kill()
    writer.wait(30)  # a writer stuck in the FUSE mount would hang here
    writer.stdout.close()
    with sqlite3.connect(db) as check:
        tables = check.execute("SELECT name FROM sqlite_master WHERE name = 't'").fetchall()
        found = check.execute("SELECT count(*) FROM t").fetchone()[0] if tables else 0
    check.close()
    assert found < said
