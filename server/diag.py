"""The Diag interface every node serves: liveness, echo, deliberate errors."""

import time

import trio

import rpc
from rpc import errors, schema

diag = schema.load("diag")
SLEEP_MS_MAX = 60_000


class DiagServer(rpc.Server, interfaces=[diag.Diag]):
    def __init__(self, node_name: str = ""):
        self.node_name = node_name
        self.sleeps_cancelled = 0

    @rpc.inline
    async def ping(self, params, results):
        results.nodeName = self.node_name
        results.nowNs = time.time_ns()

    @rpc.inline
    async def echo(self, params, results):
        results.data = params.data

    @rpc.inline
    async def fail(self, params, results):
        cls = errors.BY_KIND.get(params.kind)
        if cls is None:
            raise ValueError(f"unknown error kind {params.kind!r}")
        raise cls(params.message)

    async def report(self, params, results):
        raise rpc.Unimplemented("this server keeps no node report")

    async def maintain(self, params, results):
        raise rpc.Unimplemented("this server runs no maintenance")

    async def sleep(self, params, results):
        try:
            await trio.sleep(min(params.ms, SLEEP_MS_MAX) / 1000)
        except trio.Cancelled:
            self.sleeps_cancelled += 1
            raise
        results.completed = True
