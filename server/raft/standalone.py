"""A bare Raft group member as a process: the Raft service, its RPC server
and the recording state machine, without the rest of a node.  Used by the
real-process tests and benchmarks/raft_bench.py, where killing a process
with SIGKILL must look exactly like a crashed node.

    python -m server.raft.standalone --id 1 --listen 127.0.0.1:7101 \\
        --peer 1=127.0.0.1:7101 --peer 2=127.0.0.1:7102 --peer 3=127.0.0.1:7103 \\
        --data-dir /tmp/r1 [--tick-ms 20] [--election-ticks 10]
"""

import argparse
import logging
import sys

import trio

import rpc
from rpc.logfmt import configure, kv
from rpc.pool import Pool
from server.diag import DiagServer

from .config import RaftConfig
from .group import open_group
from .kvsm import RecordingStateMachine
from .server import RaftServer

log = logging.getLogger("chordfs.raft")


class _Server(DiagServer, RaftServer):
    def __init__(self, name, group, pool):
        DiagServer.__init__(self, name)
        self.raft_service, self.raft_pool, self.raft_addr_of = group.service, pool, group.addr_of


def _peer(text: str) -> tuple[int, str]:
    node_id, sep, addr = text.partition("=")
    if not sep or not node_id.isdigit():
        raise argparse.ArgumentTypeError(f"peer {text!r} is not ID=host:port")
    rpc.split_addr(addr)
    return int(node_id), addr


def _apply_log_writer(path: str):
    out = open(path, "a", buffering=1)  # line-buffered: a SIGKILL loses no applied line

    def sink(index: int, data: bytes) -> None:
        out.write(f"{index} {data.hex()}\n")
    return sink


async def serve(args) -> None:
    addrs = dict(args.peer)
    cfg = RaftConfig(election_timeout_ticks=args.election_ticks,
                     heartbeat_interval_ticks=max(1, args.election_ticks // 5))
    host, port = rpc.split_addr(args.listen)
    async with trio.open_nursery() as nursery:
        pool = Pool(nursery, connect_timeout_s=0.5, backoff_max_s=0.5)
        sink = _apply_log_writer(args.apply_log) if args.apply_log else None
        group = open_group(args.id, addrs, args.data_dir, RecordingStateMachine(sink), pool,
                           cfg=cfg, tick_s=args.tick_ms / 1000)
        await nursery.start(group.transport.run)
        await nursery.start(lambda task_status: rpc.serve_tcp(
            lambda: _Server(str(args.id), group, pool), port, host=host, task_status=task_status))
        await nursery.start(group.service.run)
        log.info(kv("raft.ready", node=args.id, listen=args.listen))
        print("READY", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server.raft.standalone")
    parser.add_argument("--id", type=int, required=True)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--peer", type=_peer, action="append", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--tick-ms", type=int, default=20)
    parser.add_argument("--election-ticks", type=int, default=10)
    parser.add_argument("--apply-log", help="append 'index hexdata' per applied command (tests)")
    args = parser.parse_args(argv)
    if args.id not in dict(args.peer):
        parser.error("--peer must list this node's own id too")
    configure(logging.WARNING, node=str(args.id))
    try:
        trio.run(serve, args)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
