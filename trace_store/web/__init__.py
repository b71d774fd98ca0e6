"""The trace workbench: web pages on the trace store's database for quality engineers
(docs/workbench.md). ``command.py`` is the ``edge-agent workbench`` command, ``app.py`` the
routes and access control, ``pages_*.py`` one page each, ``svg.py`` the charts.

Needs the ``web`` extra (Starlette, uvicorn, Jinja2, XlsxWriter); nothing here is imported
until the command runs.
"""
