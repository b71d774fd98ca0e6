"""Helpers for tests of the agent's journal files: damaging one the way a failing disk does."""

from __future__ import annotations

from pathlib import Path

PAGE = 4096  # SQLite's default page size, which the journal keeps
LEAF_TABLE_PAGE = 0x0D  # the first byte of a table b-tree leaf page


def corrupt_a_leaf(path: Path) -> int:
    """Overwrite one table leaf page in the middle of the file with garbage; returns its
    page number (1-based)."""
    data = bytearray(path.read_bytes())
    leaves = [p for p in range(1, len(data) // PAGE) if data[p * PAGE] == LEAF_TABLE_PAGE]
    victim = leaves[len(leaves) // 2]
    data[victim * PAGE : (victim + 1) * PAGE] = bytes((i * 37 + 11) % 256 for i in range(PAGE))
    path.write_bytes(bytes(data))
    return victim + 1
