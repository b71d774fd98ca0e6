"""The OPC UA station simulator's parts; :mod:`simulators.opcua_server` puts them together.

- :mod:`.points`: the stations' variables, their OPC UA types and values (pure).
- :mod:`.security`: endpoints, the server certificate, users and the client trust list.
- :mod:`.internals`: where the simulator reaches into asyncua's server (write rules, Republish,
  a fast copy of the standard address space), kept in one place so an asyncua upgrade is
  checked in one file.
"""
