"""Node-local chunk store: content-addressed chunks on disk, verified on every
write and read, enumerable by ring-key range, summarised for anti-entropy and
scrubbed for silent corruption. ``ChunkStore`` is the blocking core,
``AsyncChunkStore`` its trio face."""

from .aiostore import AsyncChunkReader, AsyncChunkStore
from .chunkstore import CHUNK_BYTES_MAX_DEFAULT, ChunkStore, StoreStats
from .errors import (
    BadChunkId,
    ChunkNotFound,
    ChunkTooLarge,
    CorruptChunk,
    HashMismatch,
    NoSpace,
    StoreError,
    StoreLocked,
)
from .keyrange import KeyRange, chunk_id_of, ring_key
from .scrub import ScrubReport, scrub
from .summary import RangeDiff, RangeSummary, reconcile, summarize

__all__ = [
    "AsyncChunkReader", "AsyncChunkStore", "BadChunkId", "CHUNK_BYTES_MAX_DEFAULT",
    "ChunkNotFound", "ChunkStore", "ChunkTooLarge", "CorruptChunk", "HashMismatch",
    "KeyRange", "NoSpace", "RangeDiff", "RangeSummary", "ScrubReport", "StoreError",
    "StoreLocked", "StoreStats", "chunk_id_of", "reconcile", "ring_key", "scrub",
    "summarize",
]
