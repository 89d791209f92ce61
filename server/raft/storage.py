"""Durable Raft storage: log segments, hard state, snapshot (does I/O; not
part of the pure core).

Layout of a directory:
  hardstate            term, vote, commit + xxh3_64; replaced atomically
  snapshot             index, term, membership, name, size and xxh3_64 of
                       its data file + xxh3_64 of the header; atomic
  snap-<index>-<r>.data  the snapshot's data (written once, then only read:
                       a metadata image is gigabytes and is never held in
                       memory); the one the header names is kept, any
                       other is swept at open
  log-<first>.seg      append-only records, one xxh3_64 per record:
                         u32 data_len | u64 index | u64 term | u8 kind | data | u64 xxh3
Atomic replace = write temp file, fsync it, rename over, fsync directory.

Recovery (open):
  * a torn tail of the newest segment (a partial record, or a bad checksum
    on its last record) is truncated: that write was never acknowledged,
    because append() returns only after fsync;
  * any other bad record is corruption: CorruptLog names file and offset
    and nothing is repaired (the node must be rebuilt from its peers);
  * entries covered by the snapshot are ignored, a gap after it refused.

Group commit: append(entries, sync=False) many times, then sync() once; or
save(hard_state, entries, snapshot) which does a whole Ready with one fsync
per touched file.  Invariant: segment files hold contiguous indexes.
"""

from __future__ import annotations

import dataclasses
import os
import struct
import threading

import xxhash

from . import snapparts
from .messages import Entry, EntryKind, HardState, Membership, Snapshot, SnapshotFile, SnapshotMeta

_REC = struct.Struct(">IQQB")
_SUM = struct.Struct(">Q")
_HS = struct.Struct(">8sQQ?Q")
_SNAP = struct.Struct(">8sQQII")  # the first format: data inline (read, then migrated)
_SNAP2 = struct.Struct(">8sQQIQQI")  # magic, index, term, mlen, data size, data xxh3, name len
_HS_MAGIC, _SNAP_MAGIC, _SNAP2_MAGIC = b"CFRAFTHS", b"CFRAFTSN", b"CFRAFTS2"
_READ_BYTES = 1 << 20
_NO_VOTE = 0


class CorruptLog(Exception):
    """Storage found damage it must not repair."""


def _checksum(blob: bytes) -> bytes:
    return _SUM.pack(xxhash.xxh3_64_intdigest(blob))


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_synced(path: str, blob: bytes) -> None:
    with open(path, "wb") as f:
        f.write(blob)
        f.flush()
        os.fsync(f.fileno())


def _file_sum(path: str) -> tuple[int, int]:
    """(size, xxh3_64) of a file, read a MiB at a time."""
    h, size = xxhash.xxh3_64(), 0
    with open(path, "rb") as f:
        while piece := f.read(_READ_BYTES):
            h.update(piece)
            size += len(piece)
    return size, h.intdigest()


def write_atomic(path: str, blob: bytes) -> None:
    tmp = path + ".tmp"
    _write_synced(tmp, blob)
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(path) or ".")


def encode_entry(e: Entry) -> bytes:
    body = _REC.pack(len(e.data), e.index, e.term, int(e.kind)) + e.data
    return body + _checksum(body)


def _record_after(blob: bytes, off: int, index: int) -> bool:
    """Is there a valid record for `index` after `off`?  Then the bad record
    at `off` is not a torn tail (e.g. its length field is what got damaged)
    and truncating would drop acknowledged entries."""
    needle = struct.pack(">Q", index)
    pos = blob.find(needle, off + 1)
    while pos != -1:
        start = pos - 4  # the index field follows the u32 length
        if start > off and len(blob) - start >= _REC.size + _SUM.size:
            dlen = _REC.unpack_from(blob, start)[0]
            end = start + _REC.size + dlen
            if end + _SUM.size <= len(blob) and _checksum(blob[start:end]) == blob[end:end + _SUM.size]:
                return True
        pos = blob.find(needle, pos + 1)
    return False


@dataclasses.dataclass
class _Segment:
    path: str
    first: int
    offsets: list  # file offset of each record; offsets[i] holds first + i
    size: int

    def last(self) -> int:
        return self.first + len(self.offsets) - 1


class LogStorage:
    def __init__(self, directory: str, segment_bytes_max: int = 64 << 20) -> None:
        """Opens (creating if needed) and recovers `directory`."""
        self.dir, self.segment_bytes_max = directory, segment_bytes_max
        # save() runs on the driver (or its worker thread) while a snapshot
        # of our own may be finishing in another thread (save_own_snapshot).
        self._lock = threading.RLock()
        os.makedirs(directory, exist_ok=True)
        for name in os.listdir(directory):
            if name.endswith(".tmp"):  # an atomic write that never finished
                os.unlink(os.path.join(directory, name))
        self.hard_state = self._load_hard_state()
        self.snapshot: Snapshot | None = None
        self._data_name: str | None = None  # the data file the header names
        self.snapshot = self._load_snapshot()
        self._segments: list[_Segment] = []
        self._entries: list[Entry] = []
        self._active = None  # open file object of the newest segment
        self._dirty = False
        self._recover_segments()
        self._open_active()

    @staticmethod
    def has_state(directory: str) -> bool:
        """Whether ``directory`` holds anything Raft wrote (without opening
        it): the test a node uses to tell a lost disk from a new one."""
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return False
        return any((n in ("hardstate", "snapshot") or (n.startswith("log-") and n.endswith(".seg")))
                   and os.path.getsize(os.path.join(directory, n)) > 0 for n in names)

    # ------------------------------------------------------------ reading
    def entries(self) -> list[Entry]:
        """Entries after the snapshot, in order (what RaftNode wants)."""
        return list(self._entries)

    def first_index(self) -> int:
        return self.snapshot.meta.index + 1 if self.snapshot else 1

    def last_index(self) -> int:
        return self._entries[-1].index if self._entries else self.first_index() - 1

    def _load_hard_state(self) -> HardState:
        path = os.path.join(self.dir, "hardstate")
        if not os.path.exists(path):
            return HardState()
        blob = open(path, "rb").read()
        if len(blob) != _HS.size + _SUM.size or _checksum(blob[:_HS.size]) != blob[_HS.size:]:
            raise CorruptLog(f"{path}: bad hard state record at offset 0")
        magic, term, vote, has_vote, commit = _HS.unpack(blob[:_HS.size])
        if magic != _HS_MAGIC:
            raise CorruptLog(f"{path}: bad magic at offset 0")
        return HardState(term, vote if has_vote else None, commit)

    def _load_snapshot(self) -> Snapshot | None:
        path = os.path.join(self.dir, "snapshot")
        if not os.path.exists(path):
            self._sweep_data_files(None)
            return None
        blob = open(path, "rb").read()
        body, tail = blob[:-_SUM.size], blob[-_SUM.size:]
        if len(blob) < _SNAP.size + _SUM.size or _checksum(body) != tail:
            raise CorruptLog(f"{path}: bad snapshot checksum at offset {len(body)}")
        if body[:8] == _SNAP_MAGIC:
            magic, index, term, mlen, dlen = _SNAP.unpack_from(body)
            if len(body) != _SNAP.size + mlen + dlen:
                raise CorruptLog(f"{path}: bad snapshot header at offset 0")
            membership = Membership.decode(body[_SNAP.size:_SNAP.size + mlen])
            # The first format held the data inline: move it to a data file.
            snap = Snapshot(SnapshotMeta(index, term, membership), body[_SNAP.size + mlen:])
            self._sweep_data_files(None)
            adopted = self._adopt(snap)
            self._write_header(adopted)
            return Snapshot(snap.meta, SnapshotFile(adopted[2], len(snap.data)))
        if len(body) < _SNAP2.size or body[:8] != _SNAP2_MAGIC:
            raise CorruptLog(f"{path}: bad snapshot header at offset 0")
        magic, index, term, mlen, size, dsum, nlen = _SNAP2.unpack_from(body)
        if len(body) != _SNAP2.size + mlen + nlen:
            raise CorruptLog(f"{path}: bad snapshot header at offset 0")
        membership = Membership.decode(body[_SNAP2.size:_SNAP2.size + mlen])
        name = body[_SNAP2.size + mlen:].decode()
        data_path = os.path.join(self.dir, name)
        try:
            got = _file_sum(data_path)
        except FileNotFoundError:
            raise CorruptLog(f"{path}: its data file {name} is missing") from None
        if got != (size, dsum):
            raise CorruptLog(f"{data_path}: snapshot data of {got[0]} bytes does not match "
                             f"its header ({size} bytes, checksum {dsum:x})")
        self._sweep_data_files(name)
        self._data_name = name
        return Snapshot(SnapshotMeta(index, term, membership), SnapshotFile(data_path, size))

    def _sweep_data_files(self, keep: str | None) -> None:
        """Data files no header names: a crash mid-save, or a received
        snapshot the core never took."""
        for name in os.listdir(self.dir):
            if snapparts.is_data_file(name) and name != keep:
                os.unlink(os.path.join(self.dir, name))

    def _recover_segments(self) -> None:
        names = sorted(n for n in os.listdir(self.dir) if n.startswith("log-") and n.endswith(".seg"))
        segs = [(int(n[4:-4]), os.path.join(self.dir, n)) for n in names]
        segs.sort()
        for n, (first, path) in enumerate(segs):
            entries, offsets, good_end = self._read_segment(path, first, last_segment=n == len(segs) - 1)
            if good_end != os.path.getsize(path):
                with open(path, "r+b") as f:  # torn tail: never acknowledged
                    f.truncate(good_end)
                    os.fsync(f.fileno())
            if self._entries and entries and entries[0].index != self._entries[-1].index + 1:
                raise CorruptLog(f"{path}: index {entries[0].index} does not follow "
                                 f"{self._entries[-1].index} at offset 0")
            self._segments.append(_Segment(path, first, offsets, good_end))
            self._entries.extend(entries)
        self._drop_covered_by_snapshot()

    def _read_segment(self, path: str, first: int, last_segment: bool):
        blob = open(path, "rb").read()
        entries, offsets, off = [], [], 0
        while off < len(blob):
            bad = self._bad_record(blob, off, first + len(entries))
            if bad is not None:
                end = off + _REC.size + (_REC.unpack_from(blob, off)[0] if
                                         len(blob) - off >= _REC.size else 0) + _SUM.size
                want = first + len(entries)
                if last_segment and end >= len(blob) and not _record_after(blob, off, want + 1):
                    return entries, offsets, off  # torn tail
                raise CorruptLog(f"{path}: {bad} at offset {off}")
            dlen, index, term, kind = _REC.unpack_from(blob, off)
            data = blob[off + _REC.size:off + _REC.size + dlen]
            entries.append(Entry(index, term, EntryKind(kind), data))
            offsets.append(off)
            off += _REC.size + dlen + _SUM.size
        return entries, offsets, off

    @staticmethod
    def _bad_record(blob: bytes, off: int, want_index: int) -> str | None:
        if len(blob) - off < _REC.size:
            return "partial record header"
        dlen, index, _term, kind = _REC.unpack_from(blob, off)
        end = off + _REC.size + dlen
        if end + _SUM.size > len(blob):
            return "partial record"
        if _checksum(blob[off:end]) != blob[end:end + _SUM.size]:
            return "checksum mismatch"
        if index != want_index or kind not in EntryKind._value2member_map_:
            return f"unexpected index {index} (wanted {want_index}) or kind {kind}"
        return None

    def _drop_covered_by_snapshot(self) -> None:
        if self.snapshot is None:
            return
        meta = self.snapshot.meta
        at = {e.index: e.term for e in self._entries}
        if meta.index in at and at[meta.index] != meta.term:
            # Crash between writing a leader's snapshot and dropping the
            # old log: the old log is superseded.
            for seg in self._segments:
                os.unlink(seg.path)
            self._segments, self._entries = [], []
            _fsync_dir(self.dir)
        self._entries = [e for e in self._entries if e.index > meta.index]
        if self._entries and self._entries[0].index != meta.index + 1:
            raise CorruptLog(f"{self.dir}: gap between snapshot {meta.index} "
                             f"and log entry {self._entries[0].index}")

    # ------------------------------------------------------------ writing
    def save(self, hard_state: HardState | None, entries, snapshot: Snapshot | None) -> None:
        """Persist one Ready in the order the core requires: snapshot, then
        entries (one fsync for all of them), then the hard state."""
        with self._lock:
            self._save(hard_state, entries, snapshot)

    def _save(self, hard_state: HardState | None, entries, snapshot: Snapshot | None) -> None:
        if snapshot is not None:
            self._save_snapshot(snapshot)
        if entries:
            self.append(entries, sync=False)
            self.sync()
        if hard_state is not None and (hard_state.term, hard_state.vote) != (
                self.hard_state.term, self.hard_state.vote):
            self.set_hard_state(hard_state)
        # A change of commit alone is not written: the commit index is
        # volatile in Raft (a restarted node relearns it from the leader, and
        # open_group raises it to what the state machine already applied),
        # while writing it would cost two fsyncs on every commit.

    def set_hard_state(self, hs: HardState) -> None:
        body = _HS.pack(_HS_MAGIC, hs.term, hs.vote or _NO_VOTE, hs.vote is not None, hs.commit)
        write_atomic(os.path.join(self.dir, "hardstate"), body + _checksum(body))
        self.hard_state = hs

    def append(self, entries, sync: bool = True) -> None:
        """Write entries; those from entries[0].index on replace any stored
        suffix (a conflict resolved by the leader).  Durable after sync()."""
        entries = list(entries)
        if not entries:
            return
        first = entries[0].index
        if first < self.first_index():
            raise ValueError(f"append at {first} below the snapshot")
        if first <= self.last_index():
            self.truncate_suffix(first)
        if first != self.last_index() + 1:
            raise ValueError(f"append at {first} leaves a gap after {self.last_index()}")
        for e in entries:
            seg = self._segments[-1] if self._segments else None
            if seg is None or seg.size >= self.segment_bytes_max or seg.last() + 1 != e.index:
                seg = self._roll(e.index)
            record = encode_entry(e)
            self._active.write(record)
            seg.offsets.append(seg.size)
            seg.size += len(record)
            self._entries.append(e)
        self._dirty = True
        if sync:
            self.sync()

    def sync(self) -> None:
        if self._active is not None and self._dirty:
            self._active.flush()
            os.fsync(self._active.fileno())
        self._dirty = False

    def _roll(self, first: int) -> _Segment:
        self._close_active()
        path = os.path.join(self.dir, f"log-{first:020d}.seg")
        self._active = open(path, "wb")
        _fsync_dir(self.dir)  # the new file's name must survive a crash too
        seg = _Segment(path, first, [], 0)
        self._segments.append(seg)
        return seg

    def _open_active(self) -> None:
        if self._active is None and self._segments:
            self._active = open(self._segments[-1].path, "ab")

    def _close_active(self) -> None:
        if self._active is not None:
            self.sync()
            self._active.close()
            self._active = None

    def truncate_suffix(self, index: int) -> None:
        """Drop entries >= index (never below the snapshot)."""
        if index < self.first_index():
            raise ValueError(f"truncation at {index} below the snapshot")
        self._close_active()
        while self._segments and self._segments[-1].first >= index:
            os.unlink(self._segments.pop().path)
        if self._segments and self._segments[-1].last() >= index:
            seg = self._segments[-1]
            cut = seg.offsets[index - seg.first]
            with open(seg.path, "r+b") as f:
                f.truncate(cut)
                os.fsync(f.fileno())
            del seg.offsets[index - seg.first:]
            seg.size = cut
        _fsync_dir(self.dir)
        self._entries = [e for e in self._entries if e.index < index]
        self._open_active()

    def _adopt(self, snap: Snapshot) -> tuple[Snapshot, int, str]:
        """The snapshot with its data in a durable file of this directory,
        that data's xxh3_64, and its file.  Bytes (small state machines) are written
        out; a file made here (an image, a joined transfer) is kept as it is."""
        data = snap.data
        if isinstance(data, SnapshotFile) and os.path.dirname(data.path) == self.dir:
            size, dsum = _file_sum(data.path)
            if size != data.size:
                raise CorruptLog(f"{data.path}: {size} bytes, the snapshot says {data.size}")
            return snap, dsum, data.path
        path = snapparts.new_data_path(self.dir, snap.meta.index)
        if isinstance(data, SnapshotFile):  # made elsewhere: copied, never moved
            with open(data.path, "rb") as src, open(path, "wb") as dst:
                while piece := src.read(_READ_BYTES):
                    dst.write(piece)
                dst.flush()
                os.fsync(dst.fileno())
        else:
            _write_synced(path, data)
        _fsync_dir(self.dir)
        size, dsum = _file_sum(path)
        # Memory-held data stays as it is for the caller (the core holds the
        # same object); what a restart loads is the file.
        held = data if isinstance(data, bytes) else SnapshotFile(path, size)
        return dataclasses.replace(snap, data=held), dsum, path

    def _write_header(self, adopted: tuple[Snapshot, int, str]) -> None:
        """Point ``snapshot`` at the adopted data, then delete the data the
        old header named (a transfer reading it keeps its descriptor)."""
        snap, dsum, path = adopted
        meta = snap.meta
        mblob, name = meta.membership.encode(), os.path.basename(path).encode()
        body = _SNAP2.pack(_SNAP2_MAGIC, meta.index, meta.term, len(mblob), os.path.getsize(path),
                           dsum, len(name)) + mblob + name
        old = self._data_name
        write_atomic(os.path.join(self.dir, "snapshot"), body + _checksum(body))
        self._data_name = os.path.basename(path)
        self.snapshot = snap
        if old is not None and old != self._data_name:
            try:
                os.unlink(os.path.join(self.dir, old))
            except FileNotFoundError:
                pass

    def discard(self, snap: Snapshot) -> None:
        """Delete the data file of a snapshot that was never saved (an image
        the core skipped, one a newer snapshot overtook)."""
        data = snap.data if isinstance(snap, Snapshot) else snap
        if isinstance(data, SnapshotFile) and os.path.dirname(data.path) == self.dir:
            with self._lock:
                if os.path.basename(data.path) != self._data_name:
                    try:
                        os.unlink(data.path)
                    except FileNotFoundError:
                        pass

    def save_own_snapshot(self, snap: Snapshot) -> bool:
        """A snapshot of this node's own state machine, saved while the
        driver goes on (from a worker thread): the data is made durable
        outside the lock; under it, one saved meanwhile at the same index or
        later (a leader's InstallSnapshot) wins and this one's data is
        deleted, else this one replaces the old and the log it covers goes.
        True if saved."""
        adopted = self._adopt(snap)
        with self._lock:
            if self.snapshot is not None and self.snapshot.meta.index >= snap.meta.index:
                if os.path.basename(adopted[2]) != self._data_name:
                    os.unlink(adopted[2])
                return False
            self._write_header(adopted)
            self.compact(snap.meta.index)
        return True

    def save_snapshot(self, snap: Snapshot) -> None:
        """Write the snapshot atomically, then drop the log it covers.  A log
        that does not hold the snapshot's last entry is dropped entirely
        (the follower's log was replaced by the leader's snapshot)."""
        with self._lock:
            self._save_snapshot(snap)

    def _save_snapshot(self, snap: Snapshot) -> None:
        meta = snap.meta
        old_first = self.first_index()
        self._write_header(self._adopt(snap))
        keeps_log = any(e.index == meta.index and e.term == meta.term for e in self._entries)
        if not keeps_log and (self._entries or old_first <= meta.index):
            self._close_active()
            for seg in self._segments:
                os.unlink(seg.path)
            self._segments, self._entries = [], []
            _fsync_dir(self.dir)
            return
        self.compact(meta.index)

    def compact(self, index: int) -> None:
        """Forget entries <= index; only after a snapshot at >= index is
        durable.  Whole segments are deleted; a partly covered one stays."""
        assert self.snapshot is not None and self.snapshot.meta.index >= index
        self._close_active()
        while self._segments and self._segments[0].last() <= index:
            os.unlink(self._segments.pop(0).path)
        _fsync_dir(self.dir)
        self._entries = [e for e in self._entries if e.index > index]
        self._open_active()

    def close(self) -> None:
        self._close_active()
