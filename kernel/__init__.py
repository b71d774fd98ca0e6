"""The kernel every other package builds on: the data model, the error tree, alarms, backoff
and the small shared types (``Name``, ``Issue``).

It imports nothing of the project (only the standard library, and pydantic for ``Name``'s
constraints), so that ``drivers/``, ``buffer/``, ``sync/``, ``edge_agent/`` and the central
``trace_store/`` can all depend on it without depending on each other: the trace store shares
these helpers with the edge, never the edge's drivers or journal.
"""
