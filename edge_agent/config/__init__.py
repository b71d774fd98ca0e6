"""The agent's YAML config, split by job: the models (``models``), the checks that span
sections (``checks``), the loader (``loader``) and pydantic's errors as messages
(``messages``). Everything a caller needs is importable from here."""

from buffer.config import BufferConfig, DiskWatermarkConfig, TelemetryRetention
from edge_agent.config.loader import (
    control_socket,
    load_config,
    parse_config,
    read_secret_files,
)
from edge_agent.config.models import (
    WELL_KNOWN_CONTEXT,
    AgentConfig,
    AgentIdentity,
    ContextSource,
    ControlConfig,
    HandshakeConfig,
    Limits,
    PartConfig,
    ResultConfig,
    ScanConfig,
    ScanSource,
    SnapshotConfig,
    StationConfig,
    Templates,
    TriggerConfig,
    agent_model,
)

__all__ = [
    "WELL_KNOWN_CONTEXT",
    "AgentConfig",
    "AgentIdentity",
    "BufferConfig",
    "ContextSource",
    "ControlConfig",
    "DiskWatermarkConfig",
    "HandshakeConfig",
    "Limits",
    "PartConfig",
    "ResultConfig",
    "ScanConfig",
    "ScanSource",
    "SnapshotConfig",
    "StationConfig",
    "TelemetryRetention",
    "Templates",
    "TriggerConfig",
    "agent_model",
    "control_socket",
    "load_config",
    "parse_config",
    "read_secret_files",
]
