"""Metadata state machine applied by Raft.

Modules: ``types`` (commands, results), ``schema`` (SQLite layout and row
helpers), ``namespace``/``rename``/``attrs`` (command handlers), ``blocks``
(byte-range extents, block refcounts, the block lifecycle and log time), ``validate`` (static checks of a command, run
before proposing and again in apply), ``apply`` (transactions, the applied
index, and turning a handler's exception into an EIO result), ``queries``
(reads): all pure cores working on a sqlite3 connection they are handed. ``codec`` (Cap'n Proto, rpc/schema/meta.capnp) and ``store`` (the
file-backed ``MetaStore`` with snapshots) do I/O.

Entry points:
- Raft service: ``MetaStore(path, InitParams(...))``, ``apply(index, bytes)``,
  ``apply_batch([(index, bytes)])``, ``applied_index``, ``checkpoint()``,
  ``snapshot_to(path)``, ``restore_from(path)``; for GC, the sweeper and the
  compactor ``gc_candidates``, ``block_state``, ``log_time_ns``/``log_time_at``,
  ``fragmented_files``, ``sparse_blocks``, ``extents_in``, ``range_digest``.
- Proposers: ``codec.encode_command(types.Create(...))`` stamps nothing
  itself; the proposer fills ``now_ns``. Results travel back with
  ``codec.encode_result``/``decode_result``.
- FUSE layer (after ReadIndex): ``lookup``, ``getattr``, ``readdir`` (name
  cursor; '.' and '..' are its own, '..' from ``DirPage.parent``),
  ``readlink``, ``getxattr``, ``listxattr``, ``statfs``, ``manifest``,
  ``orphans``.

Decisions: modes arrive with the caller's umask, applied unless the parent
has a default POSIX ACL (``acl.py``); unlink/rename of a last link frees the inode unless the
command says ``keep_orphan`` (file still open), then ``ReleaseOrphan`` frees
it; an index at or below the applied one returns ``AlreadyApplied``.
"""

PURE_CORE = True
