"""Who may do what: the caller's groups and the POSIX mode check, for the
few requests the kernel does not check itself (``default_permissions``
covers the rest): a clone, and an open that arrives as a create."""

from __future__ import annotations

from server.meta.types import Attr


def caller_groups(ctx) -> frozenset[int]:
    """The caller's gid and supplementary groups. FUSE passes only the
    gid; the rest comes from /proc (world-readable; the caller is blocked
    in its request, so the pid is still its own). Without /proc, the gid."""
    groups = {ctx.gid}
    try:
        with open(f"/proc/{ctx.pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"Groups:"):
                    groups.update(int(g) for g in line.split()[1:])
                    break
    except (OSError, ValueError):
        pass
    return frozenset(groups)


def may(attr: Attr, uid: int, groups: frozenset[int], want: int) -> bool:
    """POSIX mode check of ``want`` (os.R_OK | W_OK | X_OK bits): the
    owner's bits for the owner, the group's for a member, else the
    others'; root may do anything here."""
    if uid == 0:
        return True
    if uid == attr.uid:
        bits = attr.mode >> 6
    elif attr.gid in groups:
        bits = attr.mode >> 3
    else:
        bits = attr.mode
    return bits & want == want
