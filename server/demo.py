"""`make run` / `make stop`: a local cluster on 127.0.0.1 under .chordfs-demo/,
mounted at ./mnt.

Each node is a separate `chordfs node` process; their PIDs are recorded so
`chordfs demo-stop` (make stop) can end them from another shell.  Ctrl-C in
the demo stops them too.  Stop order: unmount first (so open files are
committed while the cluster is still there), then the nodes."""

import os
import pathlib
import signal
import subprocess
import sys
import time

NODES = 3
MOUNTPOINT = "mnt"


def _pidfile(base: pathlib.Path) -> pathlib.Path:
    return base / "pids"


class _Stop(Exception):
    """SIGTERM or SIGHUP (the terminal closed): stop like Ctrl-C."""


def _on_signal(signum, frame):
    raise _Stop(signal.Signals(signum).name)


def run(directory: str, base_port: int, restart: bool = True) -> int:
    base = pathlib.Path(directory).resolve()
    base.mkdir(parents=True, exist_ok=True)
    running = [pid for pid in _recorded(base) if _alive(pid)]
    if running:
        print(f"chordfs: a demo cluster is already running from {base} (node pids "
              f"{' '.join(map(str, running))}); stop it with `make stop` first", file=sys.stderr)
        return 1
    _pidfile(base).unlink(missing_ok=True)
    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        return _run(base, base_port, restart)
    except (KeyboardInterrupt, _Stop):
        print("\nstopping the demo cluster")
        return 0
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if _pidfile(base).exists():
            with _signals_ignored():
                stop(str(base))


RESTART_S = 2.0            # systemd's RestartSec in systemd/chordfs-node@.service
RESTARTS_MAX = 5           # within RESTART_WINDOW_S, like StartLimitBurst: then it stays down
RESTART_WINDOW_S = 60.0


def _start_node(base: pathlib.Path, tls: pathlib.Path, addrs: list[str], i: int) -> subprocess.Popen:
    log = open(base / f"node{i + 1}.log", "ab")
    # Node names stay their addresses: the ring sends to a member by name.
    # Node 1 founds the cluster (a no-op once its directory has one); the
    # others join through it and the leader promotes them to voters.
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "server.cli", "node", "--listen-port", addrs[i].split(":")[1],
             "--data-dir", str(base / f"node{i + 1}"), "--seeds", ",".join(addrs),
             *_flags(tls, addrs[i])]
            + (["--init"] if i == 0 else []),
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        log.close()


def _record(base: pathlib.Path, procs) -> None:
    _pidfile(base).write_text("".join(f"{p.pid}\n" for p in procs if p is not None))


def _run(base: pathlib.Path, base_port: int, restart: bool = True) -> int:
    procs: list[subprocess.Popen | None] = [None] * NODES
    addrs = [f"127.0.0.1:{base_port + i}" for i in range(NODES)]
    tls = _certificates(base / "tls", addrs)
    for i in range(NODES):
        procs[i] = _start_node(base, tls, addrs, i)
        # Recorded as each starts: an interrupt now still stops what began.
        _record(base, procs)
    if not _wait_ready(addrs, procs, _flags(tls, "admin")):
        print(f"chordfs: the demo nodes did not start; see {base}/node*.log", file=sys.stderr)
        return 1
    mnt = pathlib.Path(MOUNTPOINT).resolve()
    if not _mount(addrs, mnt, base, tls):
        return 1
    print(f"chordfs demo: {NODES} nodes serving on {', '.join(addrs)} (logs in {base}/)")
    print(f"mounted at {mnt}; try:")
    print(f"      cp -r /usr/share/doc/fuse3 {mnt}/ && ls -l {mnt}/fuse3")
    print(f"      .venv/bin/chordfs status {addrs[0]} {' '.join(_flags(tls, 'admin'))}")
    print("          # every member's state (TLS: the demo's CA and an admin certificate in "
          f"{tls}/)")
    print(f"      kill -9 one node's PID (see {base}/pids): reads and writes keep working"
          + (f"; the demo restarts it after {RESTART_S:g} s, as systemd would" if restart
             else " (--no-restart: it stays down)"))
    print("stop: Ctrl-C here, or `make stop` from another shell", flush=True)
    restart_at: dict[int, float] = {}
    starts: dict[int, list[float]] = {i: [] for i in range(NODES)}
    while True:
        time.sleep(0.2)
        if not _pidfile(base).exists():
            print("the demo cluster was stopped (make stop)")
            return 0
        now = time.monotonic()
        for i, p in enumerate(procs):
            if p is not None and p.poll() is not None and i not in restart_at:
                starts[i] = [t for t in starts[i] if now - t < RESTART_WINDOW_S]
                again = restart and len(starts[i]) < RESTARTS_MAX
                # A node going away is what the demo is for: the others go on.
                print(f"chordfs demo: node {i + 1} ({addrs[i]}) exited with code {p.returncode}; "
                      + (f"restarting it in {RESTART_S:g} s" if again else "it stays down")
                      + f" (log: {base}/node{i + 1}.log)", file=sys.stderr, flush=True)
                if again:
                    restart_at[i] = now + RESTART_S
                else:
                    procs[i] = None
            if i in restart_at and now >= restart_at[i]:
                del restart_at[i]
                starts[i].append(now)
                procs[i] = _start_node(base, tls, addrs, i)
                if _pidfile(base).exists():  # gone: `make stop` ran meanwhile
                    _record(base, procs)
                print(f"chordfs demo: node {i + 1} ({addrs[i]}) restarted, pid {procs[i].pid}",
                      file=sys.stderr, flush=True)
        if all(p is None for p in procs):
            print("chordfs demo: every node is down; stopping", file=sys.stderr)
            return 1


class _signals_ignored:
    """Stopping is not itself interrupted by a second Ctrl-C or SIGTERM."""

    def __enter__(self):
        self.saved = {s: signal.signal(s, signal.SIG_IGN)
                      for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}

    def __exit__(self, *exc):
        for s, handler in self.saved.items():
            signal.signal(s, handler)


def _recorded(base: pathlib.Path) -> list[int]:
    try:
        return [int(line) for line in _pidfile(base).read_text().split()]
    except (FileNotFoundError, ValueError):
        return []


def _certificates(tls: pathlib.Path, addrs: list[str]) -> pathlib.Path:
    """The demo cluster's CA and certificates, made once: one per node (its
    name is its address), an admin node certificate for the CLI, and the
    mount's client certificate."""
    from .pki import init_ca, issue
    if not (tls / "ca.crt").exists():
        init_ca(str(tls))
    for name in [*addrs, "admin"]:
        if not (tls / f"{name}.crt").exists():
            issue(str(tls), str(tls), node=name)
    if not (tls / "mount.crt").exists():
        issue(str(tls), str(tls), client="mount")
    return tls


def _flags(tls: pathlib.Path, name: str) -> list[str]:
    return ["--tls-ca", str(tls / "ca.crt"), "--tls-cert", str(tls / f"{name}.crt"),
            "--tls-key", str(tls / f"{name}.key")]


def _wait_ready(addrs: list[str], procs, flags: list[str], timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    for addr in addrs:
        while True:
            ping = subprocess.run([sys.executable, "-m", "server.cli", "ping", addr, "--count", "1",
                                   "--timeout-s", "1", *flags], capture_output=True, text=True)
            if ping.returncode == 0:
                break
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                return False
            time.sleep(0.2)
    return True


def _mount(addrs: list[str], mnt: pathlib.Path, base: pathlib.Path, tls: pathlib.Path) -> bool:
    mnt.mkdir(exist_ok=True)
    (base / "mountpoint").write_text(str(mnt))
    options = f"tls_ca={tls}/ca.crt,tls_cert={tls}/mount.crt,tls_key={tls}/mount.key"
    result = subprocess.run([sys.executable, "-m", "fusefs.mount", ",".join(addrs), str(mnt),
                             "-o", options, "--log", str(base / "mount.log")],
                            capture_output=True, text=True)
    if result.returncode != 0:
        print(f"chordfs: mounting at {mnt} failed: {result.stderr.strip()}", file=sys.stderr)
        return False
    return True


def _unmount(base: pathlib.Path) -> None:
    record = base / "mountpoint"
    if not record.exists():
        return
    mnt = record.read_text().strip()
    if os.path.ismount(mnt):
        if subprocess.run(["fusermount3", "-u", mnt], capture_output=True).returncode == 0:
            print(f"unmounted {mnt}")
        else:
            # Busy: detach it now; the mount process is stopped below with
            # the nodes' shutdown, so open files fail instead of hanging.
            subprocess.run(["fusermount3", "-u", "-z", mnt], capture_output=True)
            print(f"{mnt} was busy (a file open there): detached it; programs that hold files "
                  "there get errors from now on")
            _stop_mount_process(mnt)
    record.unlink(missing_ok=True)


def _stop_mount_process(mnt: str) -> None:
    for proc in pathlib.Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"fusefs.mount" in b" ".join(args) and mnt.encode() in args:
            try:
                os.kill(int(proc.name), signal.SIGTERM)
            except ProcessLookupError:
                pass


def stop(directory: str) -> int:
    base = pathlib.Path(directory).resolve()
    _unmount(base)
    pidfile = _pidfile(base)
    if not pidfile.exists():
        print("chordfs: no demo cluster is running here")
        return 0
    pids = [int(line) for line in pidfile.read_text().split()]
    # Remove the record first: the demo process watching its nodes then
    # knows their exit was asked for.
    pidfile.unlink(missing_ok=True)
    for pid in pids:
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 5
    for pid in pids:
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)
        if _alive(pid):
            os.killpg(pid, signal.SIGKILL)
    print(f"stopped {len(pids)} demo nodes")
    return 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie child of ours still answers kill(0): reap it
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True
