"""``python -m tests.chaos --runs N --seed S``: N seeded fault scenarios on a
3-node cluster in network namespaces (root, ip, nft and tc needed; `make
chaos` runs it).  Prints a line per scenario as it ends, then the table;
exits 1 if any scenario lost or duplicated something or was not
linearizable."""

from __future__ import annotations

import argparse
import collections
import pathlib
import sys
import tempfile

from .netns import available
from .runner import format_table, run
from .scenarios import SCENARIOS


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos")
    parser.add_argument("--runs", type=int, default=len(SCENARIOS),
                        help="scenarios (default: each kind once)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--dir", help="where logs and data go (default: a new temp directory)")
    args = parser.parse_args()
    if args.runs < 1:
        print("chaos: --runs must be at least 1", file=sys.stderr)
        return 2
    why = available()
    if why:
        print(f"chaos: this machine cannot run the harness: {why}", file=sys.stderr)
        return 2
    base = pathlib.Path(args.dir or tempfile.mkdtemp(prefix="chordfs-chaos-"))
    print(f"chaos: {args.runs} scenarios, seed {args.seed}, logs in {base}", flush=True)
    results = run(args.runs, args.seed, base, log=lambda s: print(s, flush=True))
    print(format_table(results))
    for r in results:
        if r.error:
            print(f"scenario {r.index} ({r.scenario}): {r.error}")
    bad = [r for r in results if not r.ok()]
    unknown = sum(r.linearizable is None for r in results)
    print(f"{len(results)} scenarios: {len(bad)} failed, {unknown} without a verdict (time bound); "
          f"lost {sum(r.lost for r in results)}, duplicated {sum(r.duplicated for r in results)}, "
          f"longest unavailability {max(r.longest_unavailable_s for r in results):.2f} s")
    took = collections.Counter()
    for r in results:
        took.update(r.succeeded)
    print("operations that took effect or found something, by kind: "
          + ", ".join(f"{k} {v}" for k, v in sorted(took.items())))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
