@0xdd13615e246f831e;
# The node-local chunk store served to clients and peers: whole-chunk and
# piecewise transfer, dedup checks, and the range summaries anti-entropy
# repair compares (server/store/service.py serves it, RemoteStore calls it).
#
# Errors: outcomes a caller acts on (not found, corrupt, no space, busy...)
# come back as a Status plus a message in the result struct, so every reply
# is a normal Return and the caller branches on a value. Exceptions on the
# wire (rpc.Failed and friends) mean a bug or a transport problem, never a
# chunk's state.
#
# Sizes: a chunk is at most the store's chunk_bytes_max (4 MiB by default),
# which fits a 16 MiB frame, so `put` and `get` move whole chunks in one call.
# Larger chunks, or peers with smaller frames, use putBegin/putPiece/putCommit
# and ranged gets; a server refuses a piece above its pieceBytesMax
# (reported by `stats`) with `tooLarge`.

enum Status {
  ok @0;
  notFound @1;      # no chunk with this id is stored here
  corrupt @2;       # the stored copy failed verification and was quarantined
  hashMismatch @3;  # the data sent does not hash to the id: nothing stored
  noSpace @4;       # storing would cross the disk reserve: nothing stored
  tooLarge @5;      # chunk above chunk_bytes_max, or a piece above pieceBytesMax
  badRequest @6;    # malformed ids, out-of-range offsets, unknown write handle
  overloaded @7;    # a limit of the service is reached (buffered bytes, open
                    # writes): nothing happened, retry later or elsewhere
  ioError @8;       # the disk failed in another way
}

struct Stats {
  chunkCount @0 :UInt64;
  usedBytes @1 :UInt64;
  freeBytes @2 :UInt64;
  reserveBytes @3 :UInt64;
  quarantinedCount @4 :UInt64;
  chunkBytesMax @5 :UInt64;
  pieceBytesMax @6 :UInt64;
  idsPerCallMax @7 :UInt32;
}

struct RangeSummary {
  # Count and xxh3_128 digest of the ids in the ring range (start, end];
  # start == end is the whole ring (server/store/keyrange.py).
  start @0 :UInt64;
  end @1 :UInt64;
  count @2 :UInt64;
  digest @3 :Data;
}

interface ChunkStore {
  has @0 (ids :List(Data)) -> (status :Status, message :Text, present :List(Bool));
  # present[i] tells whether ids[i] is stored; at most idsPerCallMax ids.

  put @1 (id :Data, data :Data, afterIndex :UInt64)
      -> (status :Status, message :Text, stored :Bool, stamp :UInt64);
  # Store a whole chunk, fsynced before the reply; stored is false when the
  # chunk was already here (dedup), which is still a durable success.
  # stamp: the copy's stamp afterwards, max(its old stamp, afterIndex, this
  # node's applied metadata index); see server/meta/blocks.py for why.

  putBegin @2 (id :Data, sizeBytes :UInt64, afterIndex :UInt64)
      -> (status :Status, message :Text, writeId :UInt64, present :Bool, stamp :UInt64);
  # Open a piecewise write of sizeBytes bytes. present = true means the chunk
  # is already stored: no handle is opened (writeId 0) and nothing need be sent.

  putPiece @3 (writeId :UInt64, offset :UInt64, data :Data) -> (status :Status, message :Text);
  # Append a piece; offset must equal the bytes received so far. An error
  # other than `overloaded` aborts the write.

  putCommit @4 (writeId :UInt64) -> (status :Status, message :Text, stored :Bool, stamp :UInt64);
  # Verify, fsync and publish; the handle is gone afterwards whatever the outcome.

  putAbort @5 (writeId :UInt64) -> ();
  # Drop an open write; unknown handles are ignored.

  get @6 (id :Data, offset :UInt64, length :UInt64)
      -> (status :Status, message :Text, data :Data, sizeBytes :UInt64);
  # Bytes [offset, offset+length) of the chunk; length 0 means "to the end".
  # A read of the whole chunk (offset 0, length 0 or >= size) is verified
  # here, and a corrupt copy is quarantined and reported as `corrupt`.
  # Partial reads are not verified: the caller hashes the assembled chunk
  # and calls `verify` on a mismatch. sizeBytes is the chunk's total size.

  verify @7 (id :Data) -> (status :Status, message :Text, sizeBytes :UInt64);
  # Re-hash the stored copy; `corrupt` means it was quarantined.

  delete @8 (id :Data, mark :UInt64) -> (status :Status, message :Text, existed :Bool, kept :Bool);
  # mark > 0: delete only a copy whose stamp is below mark (a GC of a block
  # that died at log index mark); kept = true when a newer copy stayed.
  # mark 0 deletes unconditionally (hand-off of a copy confirmed elsewhere).

  stats @9 () -> (status :Status, message :Text, stats :Stats);

  rangeSummaries @10 (start :UInt64, end :UInt64, parts :UInt16)
      -> (status :Status, message :Text, summaries :List(RangeSummary));
  # Summaries of `parts` equal sub-ranges of (start, end], parts in [1, 256].

  listIds @11 (start :UInt64, end :UInt64, afterId :Data, max :UInt32)
      -> (status :Status, message :Text, ids :List(Data));
  # One page of stored ids in ring order after afterId (empty: from the
  # start). max above idsPerCallMax is refused, never silently cut, because
  # a short page is how callers see the end of the range.
}
