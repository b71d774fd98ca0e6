"""Station binding, split by job: ``rules`` (what the YAML says, the stations' state),
``records`` (observations -> records), ``parts`` (triggers, snapshots, the handshake) and
``manual`` (context set by hand, restored at start). ``edge_agent.binder.Binder`` holds the
state between calls; see its module for the whole picture."""
