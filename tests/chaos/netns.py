"""Network namespaces for the fault harness: one namespace per node, each
with a veth into a bridge in the test's own namespace (whose address is
where the clients and mounts of the test connect from), and the faults a
network gives: partitions (both ways or one way), delay and loss, healed
again.  Everything is made by ``setup`` and removed by ``teardown`` (also
of a run that crashed, by name), and touches only interfaces and
namespaces whose names start with this net's prefix.

Partitions are nftables rules in the nodes' namespaces dropping packets
from the addresses cut off; delay and loss are ``tc netem`` on a node's
interface."""

from __future__ import annotations

import dataclasses
import os
import subprocess

NFT_TABLE = "chordfs_chaos"


def _sh(*argv: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    out = subprocess.run(list(argv), capture_output=True, text=True, input=input, timeout=30)
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {out.stderr.strip() or out.stdout.strip()}")
    return out


def available() -> str | None:
    """Why this machine cannot run the harness, or None."""
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("ip", "nft", "tc"):
        if _sh("sh", "-c", f"command -v {tool}", check=False).returncode != 0:
            return f"needs {tool} (apt install iproute2 nftables)"
    return None


@dataclasses.dataclass
class Net:
    """``n`` node namespaces on 10.<octet>.<k>.0/24; the bridge (this
    namespace, where clients live) is .1, node i is .(10 + i)."""

    n: int
    k: int = 0

    def __post_init__(self) -> None:
        if not self.k:
            self.k = 20 + os.getpid() % 200
        self.prefix = f"cfx{self.k}"
        self.bridge = f"{self.prefix}br"
        self.client_ip = f"10.79.{self.k}.1"

    def ns(self, i: int) -> str:
        return f"{self.prefix}n{i}"

    def ip(self, i: int) -> str:
        return f"10.79.{self.k}.{10 + i}"

    def exec_argv(self, i: int, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns(i), *argv]

    # ------------------------------------------------------------ lifecycle

    def setup(self) -> None:
        self.teardown()
        _sh("ip", "link", "add", self.bridge, "type", "bridge")
        _sh("ip", "addr", "add", f"{self.client_ip}/24", "dev", self.bridge)
        _sh("ip", "link", "set", self.bridge, "up")
        for i in range(self.n):
            ns, host, peer = self.ns(i), f"{self.prefix}h{i}", f"{self.prefix}p{i}"
            _sh("ip", "netns", "add", ns)
            _sh("ip", "link", "add", host, "type", "veth", "peer", "name", peer)
            _sh("ip", "link", "set", host, "master", self.bridge)
            _sh("ip", "link", "set", host, "up")
            _sh("ip", "link", "set", peer, "netns", ns)
            run = lambda *a: _sh("ip", "netns", "exec", ns, *a)  # noqa: E731
            run("ip", "link", "set", "lo", "up")
            run("ip", "link", "set", peer, "name", "eth0")
            run("ip", "addr", "add", f"{self.ip(i)}/24", "dev", "eth0")
            run("ip", "link", "set", "eth0", "up")
            run("nft", "add", "table", "inet", NFT_TABLE)
            for hook in ("input", "output"):
                run("nft", "add", "chain", "inet", NFT_TABLE, hook,
                    f"{{ type filter hook {hook} priority 0; }}")

    def teardown(self) -> None:
        for i in range(self.n):
            _sh("ip", "netns", "del", self.ns(i), check=False)
            _sh("ip", "link", "del", f"{self.prefix}h{i}", check=False)
        _sh("ip", "link", "del", self.bridge, check=False)

    # ------------------------------------------------------------ faults

    def _rules(self, i: int, lines: list[str]) -> None:
        script = [f"flush chain inet {NFT_TABLE} input", f"flush chain inet {NFT_TABLE} output"]
        script += [f"add rule inet {NFT_TABLE} {line}" for line in lines]
        _sh("ip", "netns", "exec", self.ns(i), "nft", "-f", "-", input="\n".join(script) + "\n")

    def partition(self, groups: list[list[int]], client_group: int | None = 0) -> None:
        """Nodes talk only within their group; the clients (this namespace)
        reach the nodes of ``groups[client_group]`` (None: no node)."""
        for g, group in enumerate(groups):
            cut = [self.ip(j) for other in groups if other is not group for j in other]
            if client_group != g:
                cut.append(self.client_ip)
            for i in group:
                self.block(i, cut)

    def block(self, i: int, addrs: list[str]) -> None:
        """Node i neither sends to nor receives from ``addrs`` (replacing
        its earlier rules)."""
        lines = []
        for addr in addrs:
            lines += [f"input ip saddr {addr} drop", f"output ip daddr {addr} drop"]
        self._rules(i, lines)

    def isolate(self, i: int) -> None:
        """Node i reaches nobody and nobody reaches it (clients included)."""
        others = [j for j in range(self.n) if j != i]
        self.partition([[i], others], client_group=1)

    def drop_one_way(self, src: int, dst: int) -> None:
        """Packets from node ``src`` to node ``dst`` are lost; the other
        direction works (TCP then breaks both ways, as in life)."""
        self._rules(dst, [f"input ip saddr {self.ip(src)} drop"])

    def netem(self, i: int, delay_ms: int = 0, loss_pct: float = 0.0) -> str:
        """Delay and loss on node i's interface with ``tc netem``; where the
        kernel has no netem (some containers), loss alone with a random
        nftables drop. Returns what was applied."""
        args = ["tc", "qdisc", "replace", "dev", "eth0", "root", "netem"]
        if delay_ms:
            args += ["delay", f"{delay_ms}ms", f"{max(1, delay_ms // 5)}ms"]
        if loss_pct:
            args += ["loss", f"{loss_pct}%"]
        out = _sh("ip", "netns", "exec", self.ns(i), *args, check=False)
        if out.returncode == 0:
            return f"netem delay {delay_ms} ms, loss {loss_pct}%"
        if "unknown" not in out.stderr:
            raise RuntimeError(f"tc netem: {out.stderr.strip()}")
        pct = int(loss_pct)
        self._rules(i, [f"input numgen random mod 100 < {pct} drop",
                        f"output numgen random mod 100 < {pct} drop"])
        return f"no netem in this kernel: {pct}% loss each way by nftables, no delay"

    def heal(self) -> None:
        for i in range(self.n):
            self._rules(i, [])
            _sh("ip", "netns", "exec", self.ns(i), "tc", "qdisc", "del", "dev", "eth0", "root",
                check=False)
