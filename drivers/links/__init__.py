"""Byte links and framing shared by the serial and TCP device kinds (scanners, RFID, scales).

Not a device kind: this package defines no ``KIND``, so the registry passes it by. It imports
nothing here, so that discovering the kinds at start-up does not load pyserial: a driver
imports what it uses, ``drivers.links.framing`` (pure), ``drivers.links.base`` (the ``Link``
protocol and ``read_frames``), ``drivers.links.serial`` or ``drivers.links.tcp``.
"""
