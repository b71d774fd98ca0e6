"""``edge-agent test``: an integrator's config test cases, run through the real agent, the
simulators of its device map and an MQTT broker, for CI (docs/testing-configs.md).

The modules, each with one job:

- :mod:`.model`: the case file's models; :mod:`.schema` its JSON Schema.
- :mod:`.load`: finding cases, loading one with its config and scenario, every mistake located.
- :mod:`.matching`: records against expectations (pure); :mod:`.report`: the diff of a miss.
- :mod:`.run`: one case, start to verdict, within its deadline; :mod:`.logcapture`: its log.
- :mod:`.refusal`: the verdict of a case whose config must be refused (nothing runs).
- :mod:`.command`: the command (cases side by side, console, exit status); :mod:`.junit`.
"""
