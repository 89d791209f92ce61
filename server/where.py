"""`chordfs where ADDR PATH`: which nodes hold each block of a file.

The path is resolved from the filesystem's root through the metadata (as a
mount does, one lookup per component), the file's layout is read page by
page, and for each distinct block the command prints the replica set the
ring assigns it (owner first, as every client computes it) and which of
those nodes, and which others asked, actually hold a copy (ChunkStore.has on
every member, at once).  Inline data (small files kept in the metadata) has
no blocks and says so."""

from __future__ import annotations

import json
import sys

import trio

import rpc
from fusefs.cluster import ROOT_INO, ClusterConfig, open_cluster
from server.store.service import RemoteStore, RemoteStoreError, store_capnp

PAGES_MAX = 10_000
IDS_PER_CALL = 256


async def _resolve(backend, path: str) -> int:
    ino = ROOT_INO
    for part in [p for p in path.split("/") if p]:
        reply = await backend.lookup(ino, part.encode())
        if reply.err:
            raise LookupError(f"{path}: no such file or directory (at {part!r})")
        ino = reply.attr.ino
    return ino


async def locate(addrs: list[str], path: str, timeout_s: float, context) -> dict:
    cfg = ClusterConfig(tuple(addrs), call_deadline_s=timeout_s, ssl_context=context)
    async with open_cluster(cfg) as backend:
        ino = await _resolve(backend, path)
        blocks: dict[bytes, list[tuple[int, int]]] = {}
        inline = 0
        start, size = 0, 0
        for _ in range(PAGES_MAX):
            page = await backend.manifest(ino, start)
            if page.err:
                raise LookupError(f"{path}: not a regular file (errno {page.err})")
            size = page.size
            for s in page.slices:
                if s.block_id:
                    blocks.setdefault(s.block_id, []).append((s.off, s.length))
                else:
                    inline += s.length
            if page.done:
                break
            start = page.next_off
        store = backend.chunks
        members = sorted({m for b in blocks for m in store.replicas(b, len(addrs) + 8)}
                         | set(addrs))
        held: dict[str, set[bytes]] = {}

        async def ask(name):
            try:
                cap = await backend.pool.bootstrap(store.addr(name), store_capnp.ChunkStore,
                                                   timeout_s=timeout_s)
                remote = RemoteStore(cap, name, timeout_s=timeout_s)
                ids, have = list(blocks), set()
                for i in range(0, len(ids), IDS_PER_CALL):
                    part = ids[i:i + IDS_PER_CALL]
                    have |= {b for b, yes in zip(part, await remote.has_many(part)) if yes}
                held[name] = have
            except (rpc.RpcError, OSError, RemoteStoreError) as e:
                held[name] = None
                errors[name] = str(e)
        errors: dict[str, str] = {}
        if blocks:
            async with trio.open_nursery() as nursery:
                for name in members:
                    nursery.start_soon(ask, name)
        out = []
        for block, ranges in blocks.items():
            placed = list(store.replicas(block))
            holders = sorted(n for n, have in held.items() if have is not None and block in have)
            out.append({"block": block.hex(), "ranges": ranges, "replicas": placed,
                        "held_by": holders,
                        "missing_on": [n for n in placed if n not in holders and held.get(n) is not None],
                        "unknown": [n for n in placed if held.get(n) is None]})
        return {"path": path, "ino": ino, "size": size, "inline_bytes": inline, "blocks": out,
                "unreachable": errors}


def main(addrs: list[str], path: str, as_json: bool, timeout_s: float, context) -> int:
    try:
        found = trio.run(locate, addrs, path, timeout_s, context)
    except LookupError as e:
        print(f"chordfs: {e}", file=sys.stderr)
        return 1
    except (rpc.RpcError, OSError) as e:
        print(f"chordfs: {e}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(found, indent=2))
        return 0
    print(f"{found['path']}: inode {found['ino']}, {found['size']} bytes, "
          f"{len(found['blocks'])} blocks, {found['inline_bytes']} bytes inline in the metadata")
    short = 0
    for b in found["blocks"]:
        first = b["ranges"][0]
        extra = f" (+{len(b['ranges']) - 1} more ranges)" if len(b["ranges"]) > 1 else ""
        state = "ok" if not b["missing_on"] and not b["unknown"] else \
            f"missing on {', '.join(b['missing_on']) or '-'}; unknown {', '.join(b['unknown']) or '-'}"
        short += bool(b["missing_on"])
        print(f"  {b['block'][:16]}  bytes {first[0]}+{first[1]}{extra}  replicas "
              f"{' '.join(b['replicas'])}  held by {' '.join(b['held_by']) or 'nobody'}  {state}")
    for name, error in found["unreachable"].items():
        print(f"  unreachable: {name}: {error[:80]}")
    return 0 if not short else 3
