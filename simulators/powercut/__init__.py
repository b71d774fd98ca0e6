"""Power cuts, simulated for real: a FUSE filesystem that loses what was not synced.

- ``disk.py``: the model (a disk under a page cache and a directory cache; cuts that drop,
  tear or reorder what was not synced; cuts armed at an fsync);
- ``fs.py``: the filesystem process (mfusepy over libfuse 3) with its control socket;
- ``control.py``: start, cut and stop a mount from a test or a benchmark;
- ``witness.py``: what the broker accepted and the store confirmed, seen from outside;
- ``line.py``: the whole line (``simulators.rig``) on two such disks, cut and checked.
"""
