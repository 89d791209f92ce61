"""Directory write-behind under leases (fusefs/leases.py, server/meta/leases.py)
on real mounts of a 3-node cluster: what one mount makes under a lease is
what another sees at once, two mounts creating in one directory lose and
duplicate nothing, a kill -9 after fsyncdir keeps every fsynced entry and
no part of an unsent batch, and a holder cut off from the cluster past its
lease loses its unsent changes with EIO while the other mount proceeds."""

from __future__ import annotations

import errno
import os
import re
import signal
import threading
import time

import pytest

from .conftest import check_log, fuse_usable, start_mount, stop_mount

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not fuse_usable(), reason="needs /dev/fuse and fusermount3")]


def lease_stats(log_path) -> dict[str, int]:
    text = log_path.read_text()
    found = re.findall(r"lease\.stats holder=\S+ (.*)", text)
    assert found, "the mount logged no lease statistics at unmount"
    return {k: int(v) for k, v in (kv.split("=") for kv in found[-1].split())}


def fsync_dir(path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def mounts(cluster, tmp_path, a_options: str = "", b_options: str = ""):
    a = start_mount(cluster.spec, tmp_path / "a", tmp_path / "a.log", options=a_options)
    try:
        b = start_mount(cluster.spec, tmp_path / "b", tmp_path / "b.log", options=b_options)
    except BaseException:
        stop_mount(a)
        raise
    return a, b


def test_creates_under_a_lease_are_seen_by_another_mount_at_once(real_cluster, tmp_path):
    a, b = mounts(real_cluster, tmp_path)
    try:
        d = a.path / tmp_path.name
        d.mkdir()
        for i in range(1000):
            (d / f"f{i:04d}").write_bytes(b"%d\n" % i)
        # Right after, no fsync: B's listing recalls A's lease first.
        seen = b.path / tmp_path.name
        names = os.listdir(seen)
        assert sorted(names) == [f"f{i:04d}" for i in range(1000)]
        for i in (0, 517, 999):
            assert (seen / f"f{i:04d}").read_bytes() == b"%d\n" % i
        assert os.stat(seen).st_nlink == 2
    finally:
        stop_mount(a)
        stop_mount(b)
    check_log(a)
    check_log(b)
    stats = lease_stats(a.log)
    # 1000 creates and 1000 inline writes went in batches, not one commit each.
    assert stats["local"] >= 2000 and stats["batches"] <= 200, stats
    assert stats["recalls"] >= 1 and stats["lost"] == 0, stats


def test_two_mounts_creating_in_one_directory_lose_and_duplicate_nothing(real_cluster,
                                                                        tmp_path):
    a, b = mounts(real_cluster, tmp_path)
    try:
        (a.path / tmp_path.name).mkdir()
        errors: list[BaseException] = []

        def writer(root, tag):
            try:
                d = root / tmp_path.name
                for i in range(150):
                    (d / f"{tag}{i:03d}").write_bytes(f"{tag}{i}".encode())
                    if i % 50 == 49:
                        os.listdir(d)  # a read in between: recalls the other's lease
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=writer, args=(m.path, tag))
                   for m, tag in ((a, "a"), (b, "b"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        want = sorted([f"a{i:03d}" for i in range(150)] + [f"b{i:03d}" for i in range(150)])
        for m in (a, b):
            d = m.path / tmp_path.name
            names = os.listdir(d)
            assert len(names) == len(set(names)) and sorted(names) == want
            for name in ("a000", "a149", "b000", "b149"):
                assert (d / name).read_bytes() == f"{name[0]}{int(name[1:])}".encode()
    finally:
        stop_mount(a)
        stop_mount(b)
    check_log(a)
    check_log(b)


def test_kill_9_after_fsyncdir_keeps_every_fsynced_entry(real_cluster, tmp_path):
    # A batch waits up to 30 s here, so what was not fsynced is certainly unsent.
    a = start_mount(real_cluster.spec, tmp_path / "a", tmp_path / "a.log",
                    options="meta_batch_ms=30000")
    d = a.path / tmp_path.name
    try:
        d.mkdir()
        for i in range(50):
            (d / f"kept{i:02d}").write_bytes(b"kept %d" % i)
        os.mkdir(d / "sub")
        os.symlink("kept00", d / "link")
        fsync_dir(d)
        for i in range(50):
            (d / f"late{i:02d}").write_bytes(b"late %d" % i)
        assert len(os.listdir(d)) == 102  # A answers them from its batch
        a.proc.kill()
        a.proc.wait(10)
    finally:
        stop_mount(a)
    b = start_mount(real_cluster.spec, tmp_path / "b", tmp_path / "b.log")
    try:
        seen = b.path / tmp_path.name
        names = set(os.listdir(seen))
        assert {f"kept{i:02d}" for i in range(50)} | {"sub", "link"} <= names
        for i in (0, 49):
            assert (seen / f"kept{i:02d}").read_bytes() == b"kept %d" % i
        assert os.readlink(seen / "link") == "kept00"
        late = {n for n in names if n.startswith("late")}
        assert not late, f"part of an unsent batch applied: {sorted(late)[:5]}"
        # B can change the directory: A's lease ran out with A.
        (seen / "after").write_bytes(b"b")
    finally:
        stop_mount(b)
    check_log(b)


@pytest.mark.xdist_group("heavy")
def test_holder_cut_off_past_its_lease_loses_its_batch_with_eio(real_cluster, tmp_path):
    a, b = mounts(real_cluster, tmp_path, a_options="meta_batch_ms=30000",
                  b_options="deadline=60")
    d = a.path / tmp_path.name
    seen = b.path / tmp_path.name
    try:
        d.mkdir()
        (d / "base").write_bytes(b"x")
        fsync_dir(d)
        for i in range(20):
            (d / f"unsent{i:02d}").write_bytes(b"u")
        # A stops answering anyone (as if cut off from the cluster).
        os.kill(a.proc.pid, signal.SIGSTOP)
        try:
            start = time.monotonic()
            names = os.listdir(seen)  # the recall gets no answer: waits out A's lease
            waited = time.monotonic() - start
            (seen / "from_b").write_bytes(b"b")
        finally:
            os.kill(a.proc.pid, signal.SIGCONT)
        assert sorted(names) == ["base"], names
        assert 2 < waited < 45, waited
        # A comes back: its late batch is refused, and it says so.
        deadline = time.monotonic() + 30
        while True:
            try:
                fsync_dir(d)
            except OSError as exc:
                assert exc.errno == errno.EIO
                break
            assert time.monotonic() < deadline, "A never reported its lost changes"
            time.sleep(0.5)
        time.sleep(1.5)  # A's kernel drops what it was told (entry timeout)
        assert sorted(os.listdir(d)) == ["base", "from_b"]
        assert sorted(os.listdir(seen)) == ["base", "from_b"]
        fsync_dir(d)  # reported once; A works again
        (d / "again").write_bytes(b"a")
        fsync_dir(d)
        assert (seen / "again").read_bytes() == b"a"
    finally:
        stop_mount(a)
        stop_mount(b)
    check_log(b)
    assert lease_stats(a.log)["lost"] >= 1


def _read_leased_dir(a, b, name: str):
    """B writes 40 files in a new directory; A reads them all three times,
    often enough to read-lease it. Returns (A's path, B's path) of it."""
    db = b.path / name
    db.mkdir()
    for i in range(40):
        (db / f"f{i:02d}").write_bytes(b"v0 %d\n" % i)
    fsync_dir(db)
    da = a.path / name
    for _ in range(3):
        for i in range(40):
            assert (da / f"f{i:02d}").read_bytes() == b"v0 %d\n" % i
    return da, db


def test_a_reader_answering_from_its_read_lease_sees_what_another_mount_closed(real_cluster,
                                                                                tmp_path):
    """A reads a directory often enough to read-lease it, and answers
    lookups and opens there from its cache; every change B closes there is
    recalled first, so A's next open reads it (close-to-open)."""
    a, b = mounts(real_cluster, tmp_path)
    try:
        da, db = _read_leased_dir(a, b, tmp_path.name)
        for r in range(15):
            k = (r * 7) % 40
            (db / f"f{k:02d}").write_bytes(b"round %d\n" % r)  # closed here
            assert (da / f"f{k:02d}").read_bytes() == b"round %d\n" % r
            (db / f"new{r}").write_bytes(b"new %d\n" % r)
            assert (da / f"new{r}").read_bytes() == b"new %d\n" % r
            for i in range(40):  # the reader keeps reading: it leases again
                (da / f"f{i:02d}").read_bytes()
            time.sleep(0.4)
    finally:
        stop_mount(a)
        stop_mount(b)
    stats = lease_stats(a.log)
    assert stats["read_grants"] >= 1 and stats["read_hits"] > 0, stats
    assert stats["read_recalled"] >= 1, stats
    assert stats["read_layouts_ahead"] >= 1, stats  # Backend.manifests over RPC
    check_log(a)
    check_log(b)


def test_what_a_kernel_keeps_from_a_read_lease_goes_before_another_mounts_change(
        real_cluster, tmp_path):
    """Under a read lease A's kernel keeps dentries and attributes for as
    long as the lease lives, past the 1 s default timeouts (so a second pass
    asks the mount nothing); B's first change there recalls the lease and A's
    kernel drops all of them before it goes, so A sees every change B makes
    at once: a chmod, an unlink, a rename, a name replaced by another file,
    an append."""
    a, b = mounts(real_cluster, tmp_path)
    try:
        da, db = _read_leased_dir(a, b, tmp_path.name)
        time.sleep(1.2)  # past the default timeouts: only the lease keeps them
        before = {f"f{i:02d}": os.stat(da / f"f{i:02d}") for i in range(40)}
        os.chmod(db / "f00", 0o600)
        os.unlink(db / "f01")
        os.rename(db / "f02", db / "g02")
        (db / "new03").write_bytes(b"replaced\n")
        os.rename(db / "new03", db / "f03")
        with open(db / "f04", "ab") as f:
            f.write(b"more\n")
        assert os.stat(da / "f00").st_mode & 0o777 == 0o600
        assert not (da / "f01").exists()
        assert not (da / "f02").exists() and (da / "g02").read_bytes() == b"v0 2\n"
        assert os.stat(da / "f03").st_ino != before["f03"].st_ino
        assert (da / "f03").read_bytes() == b"replaced\n"
        assert os.stat(da / "f04").st_size == before["f04"].st_size + 5
        assert sorted(os.listdir(da)) == sorted(
            ["f00", "g02", "f03", "f04"] + [f"f{i:02d}" for i in range(5, 40)])
    finally:
        stop_mount(a)
        stop_mount(b)
    stats = lease_stats(a.log)
    assert stats["read_kernel_held"] >= 40 and stats["read_kernel_dropped"] >= 40, stats
    assert stats["read_recalled"] >= 1, stats
    check_log(a)
    check_log(b)
