"""The chordfs FUSE driver.

Modules: ``backend`` (the ``Backend`` interface the driver is written
against, its typed errors, and ``LocalBackend``: metadata state machine +
chunk store in-process), ``ops`` and ``fileops`` (pyfuse3 Operations),
``filedata`` (chunk cache, read path, per-file write buffer and commits),
``kernel`` (attributes, lookup/open counts, readdir offsets, cache
invalidation), ``errors`` (the single errno mapping), ``mount`` (the mount
command and the ``mount.chordfs`` helper).
"""
