"""`python -m tests.sim --seeds 5000`: the Raft cluster simulation."""

import sys

from tests.raft.simulation import main

if __name__ == "__main__":
    sys.exit(main())
