"""The journal's section of the config file (``buffer:``): where it lives, how it commits,
and the bounds and watermarks that protect trace records when storage runs low.

Lives beside the journal it configures, as ``sync/config.py`` does for the uplink, so that the
journal never imports the agent's config package.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

GIB = 1 << 30
MIB = 1 << 20


class TelemetryRetention(BaseModel):
    """Bounds on continuous telemetry (``readings`` records) in the journal. Past any bound the
    oldest telemetry is evicted first, counted and reported (alarm ``telemetry_evicted``).
    Trace records (context, scans, parts, genealogy, gaps) are never evicted."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_rows: int | None = Field(
        default=2_000_000,
        ge=1,
        description="Most telemetry records kept; null: no bound on the count.",
        examples=[2_000_000],
    )
    max_bytes: int | None = Field(
        default=GIB,
        ge=MIB,
        description="Most bytes of telemetry kept (sum of the record bodies as sent); null: no "
        "bound on the size.",
        examples=[GIB],
    )
    max_age: float | None = Field(
        default=7 * 24 * 3600.0,
        gt=0,
        description="Seconds a telemetry record is kept at most, counted from when it was "
        "committed (604800 = 7 days); null: no bound on the age.",
        examples=[604800],
    )


class DiskWatermarkConfig(BaseModel):
    """Free space of the filesystem that holds the journal, checked every check_interval."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    warn_free_bytes: int = Field(
        default=2 * GIB,
        ge=0,
        description="Below this much free space: alarm disk_low (nothing else changes).",
        examples=[2 * GIB],
    )
    critical_free_bytes: int = Field(
        default=256 * MIB,
        ge=0,
        description="Below this: alarm disk_critical, new readings are refused, and telemetry "
        "is evicted until the journal holds this much free room for trace records.",
        examples=[256 * MIB],
    )
    check_interval: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="Seconds between two checks of the free space.",
        examples=[10],
    )

    @model_validator(mode="after")
    def _check(self) -> DiskWatermarkConfig:
        if self.critical_free_bytes > self.warn_free_bytes:
            raise ValueError(
                "critical_free_bytes must not be above warn_free_bytes (the warning comes first)"
            )
        return self


class BufferConfig(BaseModel):
    """The local journal every record lands in before it is sent."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(
        default="data/buffer.db",
        description="SQLite file; a relative path is taken from the config file's folder.",
    )
    synchronous: Literal["FULL", "NORMAL"] = Field(
        default="FULL",
        description="FULL: every commit survives a power cut. NORMAL: faster, survives crashes "
        "of the agent but may lose the last commits on power loss.",
    )
    max_bytes: int | None = Field(
        default=None,
        ge=MIB,
        description="Hard cap on the journal file's size in bytes; null: the disk is the "
        "limit. When full, telemetry gives way; with none left, trace records wait in memory "
        "(alarm buffer_full) until delivery frees room.",
        examples=[8 * GIB],
    )
    telemetry: TelemetryRetention = Field(
        default_factory=TelemetryRetention,
        description="Bounds on continuous telemetry (readings): rows, bytes, age.",
    )
    disk: DiskWatermarkConfig = Field(
        default_factory=DiskWatermarkConfig,
        description="Free-space watermarks of the journal's filesystem and their alarms.",
    )
