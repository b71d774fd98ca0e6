"""The station gate (docs/gate.md): scans of blocked lots, serials or products, and serials
that skipped a required station, are refused at the station. ``config`` (the YAML section),
``blocked`` (the store's blocked set), ``decide`` (the pure decision the binder calls),
``keeper`` (the blocked set kept from MQTT and in the journal), ``route`` (questions to the
trace store)."""
