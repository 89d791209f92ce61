"""cp of a large file into a mount of three real ``chordfs node`` processes,
one of which answers ``overloaded`` to every third put
(``CHORDFS_FAULT_OVERLOAD_EVERY=3``); the same scenario as
tests/fuse/test_busy_replica.py at the issue's size. Prints the cp and
read-back times, how long until every block had 3 copies, and the mount's
chunk-path counters (retries, copies left to repair...). With
``--no-fault`` the same run without the fault, for comparison.

    .venv/bin/python benchmarks/busy_replica.py [--size-mib 200] [--no-fault]
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fuse import test_busy_replica as scenario  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=200)
    parser.add_argument("--no-fault", action="store_true", help="no node is overloaded")
    args = parser.parse_args(argv)
    if not scenario.fuse_usable():
        print("needs /dev/fuse and fusermount3", file=sys.stderr)
        return 1
    if args.no_fault:
        scenario.OVERLOAD_EVERY = 0
    with tempfile.TemporaryDirectory(prefix="chordfs-busy-") as tmp:
        figures = scenario.run_busy_copy(pathlib.Path(tmp), args.size_mib)
    mib = figures["size_mib"]
    print(f"fault: {'none' if args.no_fault else f'every {scenario.OVERLOAD_EVERY}rd put overloaded'}")
    print(f"cp {mib} MiB: {figures['cp_s']:.2f} s ({mib / figures['cp_s']:.0f} MiB/s); "
          f"read back via a fresh mount: {figures['read_s']:.2f} s ({mib / figures['read_s']:.0f} MiB/s); "
          f"byte-identical")
    print(f"all {figures['blocks']} blocks at 3 copies after a further {figures['repair_wait_s']:.1f} s")
    print("mount counters:", " ".join(f"{k}={v}" for k, v in figures.items()
                                      if k not in ("size_mib", "cp_s", "read_s", "repair_wait_s", "blocks")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
