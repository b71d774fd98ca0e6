"""Quality on the trace store (issue 20, store side): blocks and releases of lots, serials and
products with their audit trail and recall reports (``blocks.py``, ``recall.py``), the
blocked set and route answers published to the agents (``publisher.py``), and the commands
(``command.py``). Tables: ``tables.py``. The wire text is in docs/quality.md.
"""
