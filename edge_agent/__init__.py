"""edge-agent: line-side acquisition, binding, buffering and forwarding of trace data."""

__version__ = "0.1.0"
