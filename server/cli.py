"""The `chordfs` command.  Every entry point is ``main(argv) -> int``; a bad
argument prints one plain sentence and returns non-zero."""

import argparse
import logging
import sys

import trio

import rpc
from rpc.logfmt import configure, kv

from .config import ConfigError, add_config_arguments, config_from_args, example_toml
from .store.errors import StoreError

log = logging.getLogger("chordfs.cli")


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def _addr(text: str) -> str:
    try:
        rpc.split_addr(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _addrs(text: str) -> list[str]:
    return [_addr(a) for a in text.split(",") if a] or [_addr(text)]


def _positive_rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of bytes per second")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="chordfs", description="chordfs: a POSIX filesystem served by a cluster")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    node = sub.add_parser("node", help="run a node: --config FILE.toml and/or --key-name VALUE flags")
    add_config_arguments(node)
    node.add_argument("--init", action="store_true",
                      help="found a new cluster with this node as its first voter if its data "
                           "directory belongs to none yet (once, on one node; ignored afterwards)")
    cluster = sub.add_parser("cluster", help="cluster-wide commands: `chordfs cluster init`")
    cluster_sub = cluster.add_subparsers(dest="cluster_command", required=True, parser_class=_Parser)
    init = cluster_sub.add_parser("init", help="found a new cluster in this node's data directory "
                                                "(run once, on one node, before starting it)")
    add_config_arguments(init)
    members = sub.add_parser(
        "members", help="list or change the cluster's members: chordfs members ADDR[,ADDR...] "
                        "[list | add NODE | remove NODE | replace OLD NEW]")
    members.add_argument("addrs", help="any node(s) of the cluster, host:port[,host:port...]")
    members.add_argument("action", nargs="?", default="list",
                         choices=("list", "add", "remove", "replace"),
                         help="add: promote learner NODE to voter; remove: drop NODE (refused if "
                              "the voters left hold no live quorum); replace: promote NEW, remove OLD")
    members.add_argument("nodes", nargs="*", help="members by address or hex id")
    members.add_argument("--force", action="store_true",
                         help="remove even if the voters left hold no live quorum")
    members.add_argument("--timeout-s", type=float, default=3.0)
    members.add_argument("--json", action="store_true", help="list: the configuration as JSON")
    _add_tls_arguments(members, node=True)
    sub.add_parser("example-config", help="print a node.toml with every key at its default")
    sub.add_parser("config-reference", help="print the table of every node setting (markdown, "
                                            "as in the README)")
    ping = sub.add_parser("ping", help="call Diag.ping on a node and print the round trip")
    ping.add_argument("addr", type=_addr)
    ping.add_argument("--count", type=int, default=3)
    ping.add_argument("--timeout-s", type=float, default=3.0)
    _add_tls_arguments(ping)
    status = sub.add_parser("status", help="the cluster as its nodes report it: each member's "
                                           "ring state, Raft role, term, commit and applied "
                                           "index, disk, blocks, repair, scrub and GC")
    status.add_argument("addr", type=_addrs, help="any node(s), host:port[,host:port...]")
    status.add_argument("--json", action="store_true", help="every node's report as JSON")
    status.add_argument("--ring", action="store_true",
                        help="only the first node's ring view: name, state, incarnation per line")
    status.add_argument("--timeout-s", type=float, default=3.0)
    _add_tls_arguments(status)
    where = sub.add_parser("where", help="which nodes hold each block of a file: chordfs where "
                                         "ADDR[,ADDR...] PATH (PATH from the filesystem's root)")
    where.add_argument("addr", type=_addrs, help="any node(s), host:port[,host:port...]")
    where.add_argument("path", help="a file's path inside the filesystem, e.g. /home/a/f.bin")
    where.add_argument("--json", action="store_true")
    where.add_argument("--timeout-s", type=float, default=5.0)
    _add_tls_arguments(where)
    heal = sub.add_parser("heal", help="start a repair pass on every node now, follow it, then "
                                       "count under-replicated and missing blocks (exit 4 if "
                                       "any remain)")
    heal.add_argument("addr", type=_addrs, help="any node(s), host:port[,host:port...]")
    heal.add_argument("--json", action="store_true", help="the result as JSON, no progress bar")
    heal.add_argument("--wait-s", type=float, default=3600.0,
                      help="give up following after this long (the passes go on)")
    heal.add_argument("--timeout-s", type=float, default=5.0, help="deadline of each call")
    _add_tls_arguments(heal, node=True)
    scrub = sub.add_parser("scrub", help="re-read and re-hash every copy on every node now, "
                                         "restoring corrupt ones from replicas (exit 4 if one "
                                         "could not be restored)")
    scrub.add_argument("addr", type=_addrs, help="any node(s), host:port[,host:port...]")
    scrub.add_argument("--rate", type=_positive_rate, metavar="BYTES_PER_S",
                       help="read at most this many bytes/s per node (default: each node's "
                            "scrub_bytes_per_s)")
    scrub.add_argument("--json", action="store_true", help="the result as JSON, no progress bar")
    scrub.add_argument("--wait-s", type=float, default=24 * 3600.0,
                       help="give up following after this long (the passes go on)")
    scrub.add_argument("--timeout-s", type=float, default=5.0, help="deadline of each call")
    _add_tls_arguments(scrub, node=True)
    df = sub.add_parser("df", help="disk used and free on every node, and what the filesystem holds")
    df.add_argument("addr", type=_addrs, help="any node(s), host:port[,host:port...]")
    df.add_argument("--json", action="store_true", help="every node's report as JSON")
    df.add_argument("--timeout-s", type=float, default=3.0)
    _add_tls_arguments(df)
    mount = sub.add_parser("mount", help="mount a cluster: chordfs mount ADDR[,ADDR...] MOUNTPOINT [-o opts]",
                           add_help=False)
    mount.add_argument("rest", nargs=argparse.REMAINDER)
    drop = sub.add_parser("drop-cache", help="empty a chordfs mount's chunk and attribute caches "
                                             "(the kernel's too) so the next read comes from the "
                                             "cluster: chordfs drop-cache MOUNTPOINT")
    drop.add_argument("mountpoint")
    clone = sub.add_parser("clone", help="copy a file or a directory tree on a chordfs mount at "
                                         "once, sharing its blocks (no data copied): "
                                         "chordfs clone SRC DST")
    clone.add_argument("src", help="a file or directory on a chordfs mount")
    clone.add_argument("dst", help="a new path on the same mount (must not exist)")
    clone.add_argument("-v", "--verbose", action="store_true",
                       help="print a one-line summary")
    helper = sub.add_parser("install-mount-helper",
                            help="install /sbin/mount.chordfs so `mount -t chordfs` and fstab work")
    helper.add_argument("--target", default="/sbin/mount.chordfs")
    _add_pki_commands(sub)
    demo = sub.add_parser("demo", help="start a local 3-node cluster on 127.0.0.1 (make run)")
    demo.add_argument("--dir", default=".chordfs-demo")
    demo.add_argument("--base-port", type=int, default=7071)
    demo.add_argument("--no-restart", action="store_true",
                      help="leave a node that exits down (by default it is restarted after "
                           "2 s, as systemd's Restart=on-failure would)")
    sub.add_parser("demo-stop", help="stop the demo cluster (make stop)").add_argument(
        "--dir", default=".chordfs-demo")
    return parser


TLS_DEFAULT_DIR = "/etc/chordfs/tls"


def _add_tls_arguments(parser, node: bool = False) -> None:
    who = "a node's (membership changes are for nodes)" if node else "a client's or a node's"
    parser.add_argument("--tls-ca", metavar="FILE", help="the cluster CA's certificate "
                        f"(default {TLS_DEFAULT_DIR}/ca.crt)")
    parser.add_argument("--tls-cert", metavar="FILE", help=f"{who} certificate (default "
                        f"{TLS_DEFAULT_DIR}/client.crt)")
    parser.add_argument("--tls-key", metavar="FILE", help="its key (default "
                        f"{TLS_DEFAULT_DIR}/client.key)")
    parser.add_argument("--insecure", action="store_true",
                        help="plain TCP, for a node started with insecure = true")


def _client_context(args):
    """The TLS context a CLI command dials with, or None with --insecure.
    UsageError (one sentence) when the files are missing or unusable."""
    from .pki import PkiError, TlsFiles
    given = [args.tls_ca, args.tls_cert, args.tls_key]
    if args.insecure:
        if any(given):
            raise UsageError("--insecure contradicts --tls-ca, --tls-cert and --tls-key")
        return None
    defaults = [f"{TLS_DEFAULT_DIR}/{n}" for n in ("ca.crt", "client.crt", "client.key")]
    files = TlsFiles(*(g or d for g, d in zip(given, defaults)))
    try:
        files.check()
        return files.client_context()
    except PkiError as e:
        raise UsageError(f"{e} (give --tls-ca, --tls-cert and --tls-key, or --insecure for a "
                         "node without TLS)") from None


def _add_pki_commands(sub) -> None:
    ca = sub.add_parser("ca", help="the cluster's certificate authority: `chordfs ca init`")
    ca_sub = ca.add_subparsers(dest="ca_command", required=True, parser_class=_Parser)
    ca_init = ca_sub.add_parser("init", help="make the cluster's CA, once: DIR/ca.key signs every "
                                             "certificate, DIR/ca.crt goes to every node and client")
    ca_init.add_argument("--dir", required=True, help="where ca.key and ca.crt go (created 0700)")
    ca_init.add_argument("--cluster-id", metavar="HEX", help="32 hex digits (default: a new one)")
    ca_init.add_argument("--days", type=int, default=3650, help="how long the CA is valid")
    cert = sub.add_parser("cert", help="certificates for mutual TLS: `chordfs cert issue`")
    cert_sub = cert.add_subparsers(dest="cert_command", required=True, parser_class=_Parser)
    issue = cert_sub.add_parser("issue", help="make a node's or a client's key and certificate, "
                                              "signed by the CA")
    issue.add_argument("--ca", required=True, metavar="DIR", help="the directory of `chordfs ca init`")
    who = issue.add_mutually_exclusive_group(required=True)
    who.add_argument("--node", metavar="NAME", help="a node's certificate (serves and dials)")
    who.add_argument("--client", metavar="NAME", help="a client's certificate (dials only)")
    issue.add_argument("--read-only", action="store_true", help="client only: may not write")
    issue.add_argument("--subdir", metavar="PATH",
                       help="client only: confined to this directory of the filesystem (its "
                            "mounts show it as their root; the nodes refuse anything outside)")
    issue.add_argument("--out", metavar="DIR",
                       help="where NAME.crt, NAME.key and a copy of ca.crt go (default: the CA's DIR)")
    issue.add_argument("--days", type=int, default=825, help="how long the certificate is valid")
    issue.add_argument("--force", action="store_true",
                       help="replace NAME.crt, NAME.key and another CA's ca.crt in the --out DIR")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["mount"]:
        # The mount parses its own arguments: argparse.REMAINDER would take
        # neither --help nor options before the positionals (fstab's
        # mount.chordfs passes "-o opts" wherever it likes).
        from fusefs.mount import mount_main
        return mount_main(argv[1:])
    try:
        args = build_parser().parse_args(argv)
    except UsageError as e:
        print(f"chordfs: {e}", file=sys.stderr)
        return 2
    if args.command == "node":
        return _run_node(args)
    if args.command == "cluster":
        return _cluster_init(args)
    if args.command == "members":
        return _members(args)
    if args.command == "mount":
        from fusefs.mount import mount_main
        return mount_main(args.rest)
    if args.command == "drop-cache":
        from fusefs.mount import drop_cache_main
        return drop_cache_main(args.mountpoint)
    if args.command == "clone":
        from fusefs.clone import clone_main
        return clone_main(args.src, args.dst, verbose=args.verbose)
    if args.command == "install-mount-helper":
        return _install_mount_helper(args.target)
    if args.command == "example-config":
        print(example_toml(), end="")
        return 0
    if args.command == "config-reference":
        from .config import reference_markdown
        print(reference_markdown(), end="")
        return 0
    if args.command in ("ping", "status", "df", "where", "heal", "scrub"):
        try:
            context = _client_context(args)
        except UsageError as e:
            print(f"chordfs: {e}", file=sys.stderr)
            return 2
        if args.command == "ping":
            return trio.run(_ping, args.addr, args.count, args.timeout_s, context)
        if args.command in ("heal", "scrub"):
            from .healcli import main as heal_main
            return heal_main(args.command, args.addr, rate=getattr(args, "rate", None),
                             as_json=args.json, wait_s=args.wait_s, timeout_s=args.timeout_s,
                             context=context)
        if args.command == "where":
            from .where import main as where_main
            return where_main(args.addr, args.path, args.json, args.timeout_s, context)
        if args.command == "status" and args.ring:
            return trio.run(_status, args.addr[0], args.timeout_s, context)
        from .statuscli import main as status_main
        return status_main(args.addr, args.command, args.json, args.timeout_s, context)
    if args.command == "ca":
        return _ca_init(args)
    if args.command == "cert":
        return _cert_issue(args)
    from server import demo
    if args.command == "demo":
        return demo.run(args.dir, args.base_port, restart=not args.no_restart)
    return demo.stop(args.dir)


def _cluster_init(args) -> int:
    from .admin import init_main
    from .identity import IdentityError
    try:
        cfg = config_from_args(args)
        return init_main(cfg)
    except (ConfigError, IdentityError) as e:
        print(f"chordfs: {e}", file=sys.stderr)
        return 2


def _members(args) -> int:
    from .admin import members_main
    try:
        addrs = [_addr(a) for a in args.addrs.split(",") if a]
    except argparse.ArgumentTypeError as e:
        print(f"chordfs: {e}", file=sys.stderr)
        return 2
    wanted = {"list": 0, "add": 1, "remove": 1, "replace": 2}[args.action]
    if len(args.nodes) != wanted:
        print(f"chordfs: members {args.action} takes {wanted} node(s), got {len(args.nodes)}",
              file=sys.stderr)
        return 2
    try:
        context = _client_context(args)
    except UsageError as e:
        print(f"chordfs: {e}", file=sys.stderr)
        return 2
    return trio.run(members_main, addrs, args.action, args.nodes, args.force, args.timeout_s,
                    context, args.json)


def _ca_init(args) -> int:
    from .pki import PkiError, init_ca
    try:
        cluster_id = init_ca(args.dir, cluster_id=args.cluster_id, days=args.days)
    except PkiError as e:
        print(f"chordfs: {e}", file=sys.stderr)
        return 2
    print(f"CA for cluster {cluster_id} in {args.dir} (keep {args.dir}/ca.key secret; "
          f"copy {args.dir}/ca.crt to every node and client)")
    return 0


def _cert_issue(args) -> int:
    import os
    from .pki import CA_CERT, PkiError, identity_of_pem, issue
    out = args.ca if args.out is None else args.out
    try:
        cert, key = issue(args.ca, out, node=args.node, client=args.client,
                          read_only=args.read_only, subdir=args.subdir, days=args.days,
                          force=args.force)
        ident = identity_of_pem(cert)
    except PkiError as e:
        print(f"chordfs: {e}", file=sys.stderr)
        return 2
    print(f"certificate  {cert}\nkey          {key} (keep it secret)\n"
          f"ca           {os.path.join(out, CA_CERT)}\nidentity     {ident.uri}")
    return 0


def _run_node(args) -> int:
    from .identity import IdentityError
    from .meta.service import JoinRefused
    from .node import Node, tls_files
    from .pki import PkiError
    try:
        cfg = config_from_args(args)
    except ConfigError as e:
        print(f"chordfs: {e}", file=sys.stderr)
        return 2
    configure(getattr(logging, cfg.log_level.upper()), node=cfg.node_name)
    try:
        tls = tls_files(cfg)
    except PkiError as e:
        print(f"chordfs: {e}", file=sys.stderr)
        return 2
    try:
        trio.run(Node(cfg, init=args.init, tls=tls).run)
    except KeyboardInterrupt:
        log.info(kv("node.stopped", reason="interrupt"))
    except BaseException as e:  # noqa: BLE001 -- one plain sentence, not a traceback
        error = _leaf(e)
        if isinstance(error, (IdentityError, JoinRefused)):
            print(f"chordfs: {error}", file=sys.stderr)
        elif isinstance(error, StoreError):
            print(f"chordfs: cannot open the chunk store: {error}", file=sys.stderr)
        elif isinstance(error, OSError):
            print(f"chordfs: cannot serve on {cfg.listen_addr}: {error.strerror or error}",
                  file=sys.stderr)
        else:
            raise
        return 1
    return 0


def _install_mount_helper(target: str) -> int:
    """mount(8) runs /sbin/mount.<type>: point it at this installation."""
    import os
    import shutil
    # The script beside this interpreter is this installation's; a lookup on
    # PATH would find the link a previous run installed (the target itself).
    helper = os.path.join(os.path.dirname(sys.executable), "mount.chordfs")
    if not os.path.exists(helper):
        found = shutil.which("mount.chordfs")
        if found and os.path.realpath(found) != os.path.realpath(target) \
                and os.path.abspath(found) != os.path.abspath(target):
            helper = os.path.realpath(found)
    if os.path.abspath(helper) == os.path.abspath(target) or not os.path.exists(helper):
        print("chordfs: the mount.chordfs script of this installation was not found", file=sys.stderr)
        return 1
    try:
        tmp = target + ".tmp"
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(os.path.abspath(helper), tmp)
        os.replace(tmp, target)
    except OSError as e:
        print(f"chordfs: cannot install {target}: {e.strerror or e}", file=sys.stderr)
        return 1
    print(f"installed {target} -> {helper}")
    return 0


def _leaf(error: BaseException) -> BaseException:
    """The single exception inside (possibly nested) exception groups."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


async def _ping(addr: str, count: int, timeout_s: float, context=None) -> int:
    from server.diag import diag
    try:
        async with rpc.connect(addr, connect_timeout_s=timeout_s, ssl_context=context) as conn:
            cap = await conn.bootstrap(diag.Diag, timeout_s=timeout_s)
            for _ in range(count):
                start = trio.current_time()
                reply = await cap.ping(timeout_s=timeout_s)
                rtt_ms = (trio.current_time() - start) * 1000
                print(f"{addr} name={reply.nodeName} rtt_ms={rtt_ms:.3f}")
    except rpc.RpcError as e:
        print(f"chordfs: {addr} did not answer: {e}", file=sys.stderr)
        return 1
    return 0


async def _status(addr: str, timeout_s: float, context=None) -> int:
    from server.ring.wire import ring_capnp, updates_from
    try:
        with trio.fail_after(timeout_s):  # one budget for connect, bootstrap and call
            async with rpc.connect(addr, connect_timeout_s=timeout_s, ssl_context=context) as conn:
                cap = await conn.bootstrap(ring_capnp.RingPeer, timeout_s=timeout_s)
                reply = await cap.members(timeout_s=timeout_s)
                members = updates_from(reply.members)
    except (rpc.RpcError, trio.TooSlowError) as e:
        print(f"chordfs: {addr} did not answer: {e or 'timed out'}", file=sys.stderr)
        return 1
    if context is None:
        print(f"INSECURE: {addr} serves plain TCP; anyone who reaches it controls the cluster")
    for u in members:
        print(f"{u.name} {u.status.name.lower()} {u.incarnation}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
