"""A folder of files bounded in count and bytes, the oldest deleted first: the camera's
evidence frames and a watched folder's processed images.

Owned by the camera's decode thread (nothing else writes or prunes it), so the index needs
no lock. The index is built once from the folder at open (this device's files only: names
starting with its name and a time stamp, oldest first by modification time) and kept in
memory, so adding a file costs one write and the deletions it makes room with, never a
directory listing.
Several devices may share a folder; each bounds its own files.

A file is written under a temporary name and renamed into place, so a reader (or a crash)
never sees half a frame under the final name.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections import deque
from pathlib import Path


class BoundedFolder:
    """``add_bytes``/``add_file`` put a file in; the oldest go once a limit is passed."""

    def __init__(self, folder: str, mine: re.Pattern[str], max_files: int, max_bytes: int) -> None:
        self.folder = Path(folder)
        self.mine = mine
        """Matches the start of this device's file names."""
        self.max_files = max_files
        self.max_bytes = max_bytes
        self._files: deque[tuple[Path, int]] = deque()
        self._bytes = 0
        self.deleted = 0
        """Files deleted to stay within the limits (since open)."""

    def open(self) -> None:
        """Create the folder if needed and index this device's files already there; raises
        OSError when the folder cannot be made or listed."""
        self.folder.mkdir(parents=True, exist_ok=True)
        found: list[tuple[int, str, int]] = []
        with os.scandir(self.folder) as entries:
            for entry in entries:
                if not self.mine.match(entry.name) or entry.name.endswith(".part"):
                    continue
                with contextlib.suppress(OSError):  # gone meanwhile
                    if entry.is_file(follow_symlinks=False):
                        st = entry.stat(follow_symlinks=False)
                        found.append((st.st_mtime_ns, entry.name, st.st_size))
        self._files.clear()
        self._bytes = 0
        for _, name, size in sorted(found):
            self._files.append((self.folder / name, size))
            self._bytes += size
        self._prune()

    def add_bytes(self, name: str, data: bytes) -> Path:
        """Write ``data`` as ``name``; returns its path. Raises OSError."""
        path = self.folder / name
        partial = path.with_name(path.name + ".part")
        try:
            with open(partial, "wb") as f:
                f.write(data)
            os.replace(partial, path)
        except OSError:
            with contextlib.suppress(OSError):
                partial.unlink()
            raise
        self._added(path, len(data))
        return path

    def add_file(self, source: Path, name: str) -> Path:
        """Move ``source`` in as ``name``; returns its new path. Raises OSError."""
        path = self.folder / name
        size = source.stat().st_size
        try:
            os.replace(source, path)
        except OSError:  # another file system (an SMB mount): copy, then delete
            partial = path.with_name(path.name + ".part")
            shutil.copyfile(source, partial)
            os.replace(partial, path)
            source.unlink()
        self._added(path, size)
        return path

    def _added(self, path: Path, size: int) -> None:
        self._files.append((path, size))
        self._bytes += size
        self._prune()

    def _prune(self) -> None:
        # The newest file always stays, even alone over max_bytes: it is the one just named.
        while len(self._files) > 1 and (
            len(self._files) > self.max_files or self._bytes > self.max_bytes
        ):
            path, size = self._files.popleft()
            self._bytes -= size
            with contextlib.suppress(FileNotFoundError):  # someone tidied up already
                path.unlink()
            self.deleted += 1

    @property
    def count(self) -> int:
        return len(self._files)

    @property
    def total_bytes(self) -> int:
        return self._bytes
