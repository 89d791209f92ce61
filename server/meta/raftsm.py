"""The metadata store as the state machine Raft applies.

Raft hands over committed entries as bytes; results go back to proposers as
bytes (codec.encode_result).  An entry that does not decode as a Command is
answered EINVAL on every replica alike and changes nothing, so one bad
proposal can neither stop the service nor make replicas diverge; one that
decodes is checked and applied by ``apply`` (server/meta/apply.py), which
answers bad values and handler faults with errno results alike on every
replica.  ``validate`` runs the same check before a command is proposed, so
a proposer hears the refusal without a trip through the log.  Snapshots are
the store's consistent file copies (VACUUM INTO), made in the Raft
directory and handed to Raft as a SnapshotFile: it sends them in parts and
restores from the joined file, so no image is ever whole in memory."""

import errno
import itertools
import os

from ..raft import snapparts
from ..raft.messages import SnapshotFile
from . import codec, validate
from .store import MetaStore
from .types import Status


class MetaStateMachine:
    def __init__(self, store: MetaStore, scratch_dir: str, image_dir: str | None = None):
        self.store = store
        self._scratch = scratch_dir
        # Images are made where Raft storage keeps snapshot data, so saving
        # one adopts the file as it is (see LogStorage._adopt).
        self.image_dir = image_dir
        os.makedirs(scratch_dir, exist_ok=True)
        for name in os.listdir(scratch_dir):  # images a crash left behind
            if name.startswith("snapshot") and name.endswith(".db"):
                os.unlink(os.path.join(scratch_dir, name))
        # Each image its own file: the Raft service's background image and a
        # caller's snapshot() may be taken at the same time.
        self._images = itertools.count()

    def applied_index(self) -> int:
        return self.store.applied_index

    def validate(self, data: bytes) -> bytes | None:
        """The encoded result apply would answer without looking at the
        database (bytes that do not decode, values out of range), or None
        if the command needs the log. Pure: safe to call from any task."""
        try:
            cmd = codec.decode_command(data)
        except ValueError:
            return codec.encode_result(Status(errno.EINVAL))
        err = validate.check(cmd)
        return codec.encode_result(validate.error_result(cmd, err)) if err else None

    def apply(self, index: int, data: bytes) -> bytes:
        return self.apply_batch([(index, data)])[0]

    def apply_batch(self, entries: list[tuple[int, bytes]]) -> list[bytes]:
        invalid = codec.encode_result(Status(errno.EINVAL))
        good, results = [], {}
        for index, data in entries:
            try:
                codec.decode_command(data)
            except ValueError:
                results[index] = invalid
                continue
            good.append((index, data))
        if good:
            for (index, _), result in zip(good, self.store.apply_batch(good)):
                results[index] = codec.encode_result(result)
        return [results[index] for index, _ in entries]

    def snapshot(self) -> bytes:
        """The image as bytes, whatever ``image_dir`` says (tests compare them)."""
        return self._image_bytes(concurrent=False)[1]

    def _image_bytes(self, concurrent: bool) -> tuple[int, bytes]:
        path = os.path.join(self._scratch, f"snapshot-{next(self._images)}.db")
        try:
            index = self.store.snapshot_to(path, concurrent=concurrent)
            with open(path, "rb") as f:
                return index, f.read()
        finally:
            if os.path.exists(path):
                os.unlink(path)

    def snapshot_image(self, *, concurrent: bool = True) -> tuple[int, bytes | SnapshotFile]:
        """(applied index, image) of one moment. The Raft service calls it
        from a worker thread while its driver goes on applying: the copy is
        read through a connection of its own.  With an ``image_dir`` the
        image is a fsynced file there (bytes otherwise: tests, snapshot())."""
        if self.image_dir is None:
            return self._image_bytes(concurrent)
        tmp = snapparts.new_data_path(self.image_dir, 0) + snapparts.PART_SUFFIX
        try:
            index = self.store.snapshot_to(tmp, concurrent=concurrent)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            path = snapparts.new_data_path(self.image_dir, index)
            os.rename(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return index, SnapshotFile(path, os.path.getsize(path))

    def restore(self, index: int, data: bytes | SnapshotFile) -> None:
        if isinstance(data, SnapshotFile):
            restored = self.store.restore_from(data.path)
        else:
            path = os.path.join(self._scratch, "incoming.db")
            with open(path, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            try:
                restored = self.store.restore_from(path)
            finally:
                os.unlink(path)
        if restored != index:
            raise ValueError(f"snapshot holds index {restored}, Raft said {index}")
