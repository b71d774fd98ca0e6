"""Small types every config model shares: names, and the config problems models report."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.\-]*$"

Name = Annotated[
    str,
    Field(
        min_length=1,
        max_length=64,
        pattern=NAME_PATTERN,
        description="Identifier: letters, digits, '_', '.', '-'; starts with a letter or '_'.",
    ),
]
"""Sites, lines, stations, devices, points: what appears in topics, records and references."""

Issue = tuple[tuple[str | int, ...], str]
"""A config problem: key path relative to the model that found it, and the message."""
