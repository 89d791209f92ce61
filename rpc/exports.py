"""Capabilities this side of a connection has handed to the peer.

Each exported object has one id, reused while the peer holds references;
the reference count rises with every descriptor we send and falls with the
peer's Release (or a Finish that releases result capabilities).  At zero the
entry goes away, so a later call naming the id is refused."""

from .errors import ProtocolError


class ExportTable:
    def __init__(self):
        self._entries: dict[int, list] = {}  # export id -> [object, refcount]
        self._ids: dict[int, int] = {}  # id(object) -> export id
        self._next = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, export_id: int):
        entry = self._entries.get(export_id)
        return entry[0] if entry else None

    def export(self, obj) -> int:
        export_id = self._ids.get(id(obj))
        if export_id is None:
            export_id = self._next
            self._next += 1
            self._ids[id(obj)] = export_id
            self._entries[export_id] = [obj, 0]
        self._entries[export_id][1] += 1
        return export_id

    def release(self, export_id: int, count: int) -> None:
        entry = self._entries.get(export_id)
        if entry is None or count > entry[1]:
            raise ProtocolError(f"release of {count} references to export {export_id} we do not hold")
        entry[1] -= count
        if entry[1] == 0:
            del self._entries[export_id]
            del self._ids[id(entry[0])]
