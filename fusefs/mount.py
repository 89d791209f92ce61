"""`mount.chordfs` helper and `chordfs mount` (the FUSE driver lands with the
FUSE issue; until then the helper says so plainly and fails)."""

import sys


def helper_main(argv: list[str] | None = None) -> int:
    print("mount.chordfs: the chordfs FUSE driver is not built yet", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(helper_main())
