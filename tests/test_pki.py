"""The cluster's certificates: identities round-trip, files are written
safely, bad requests are refused, and real TLS handshakes accept exactly the
peers the CA vouches for."""

import datetime
import os
import ssl
import stat

import pytest
import trio
import trio.testing
from hypothesis import given, strategies as st

from server import pki
from server.cli import main
from server.pki import PeerIdentity, PkiError, TlsFiles

CLUSTER = "0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("pki") / "ca")
    pki.init_ca(d, cluster_id=CLUSTER)
    pki.issue(d, d, node="n1")
    pki.issue(d, d, client="alice")
    return d


@pytest.fixture(scope="module")
def other_ca_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("pki") / "other")
    pki.init_ca(d)
    pki.issue(d, d, node="n1")
    pki.issue(d, d, client="alice")
    return d


def files(d, name, ca=None):
    return TlsFiles(os.path.join(ca or d, "ca.crt"), os.path.join(d, name + ".crt"),
                    os.path.join(d, name + ".key"))


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_init_and_issue_round_trip(tmp_path):
    ca, out = str(tmp_path / "ca"), str(tmp_path / "out")
    cluster_id = pki.init_ca(ca)
    assert len(cluster_id) == 32 and mode(ca) == 0o700
    assert pki.identity_of_pem(os.path.join(ca, "ca.crt")) == PeerIdentity(cluster_id, "ca", "")
    node_crt, _ = pki.issue(ca, out, node="n-1.a_b")
    node = pki.identity_of_pem(node_crt)
    assert node == PeerIdentity(cluster_id, "node", "n-1.a_b") and node.is_node
    assert node.uri == f"chordfs://{cluster_id}/node/n-1.a_b"
    subdir = "/home/Zoë's files/日本 語"
    client_crt, _ = pki.issue(ca, out, client="bob", read_only=True, subdir=subdir)
    client = pki.identity_of_pem(client_crt)
    assert client == PeerIdentity(cluster_id, "client", "bob", True, subdir) and not client.is_node
    assert client.uri.isascii() and " " not in client.uri
    assert pki.parse_uri(client.uri) == client
    with open(os.path.join(out, "ca.crt"), "rb") as a, open(os.path.join(ca, "ca.crt"), "rb") as b:
        assert a.read() == b.read()
    files(out, "bob").check()
    assert files(out, "bob").identity() == client


def test_subdir_slash_means_none_and_flags_are_optional(ca_dir, tmp_path):
    crt, _ = pki.issue(ca_dir, str(tmp_path), client="carol", subdir="/")
    assert pki.identity_of_pem(crt) == PeerIdentity(CLUSTER, "client", "carol")
    assert pki.parse_uri(f"chordfs://{CLUSTER}/client/carol?subdir=%2Fa") == \
        PeerIdentity(CLUSTER, "client", "carol", subdir="/a")


def test_key_files_are_0600_from_creation(tmp_path, monkeypatch):
    seen = []
    link = os.link

    def checking_link(src, dst):
        seen.append((dst, mode(src)))
        return link(src, dst)
    monkeypatch.setattr(os, "link", checking_link)
    ca = str(tmp_path / "ca")
    pki.init_ca(ca)
    _, key = pki.issue(ca, str(tmp_path / "out"), node="n1")
    assert mode(os.path.join(ca, "ca.key")) == 0o600 and mode(key) == 0o600
    assert mode(os.path.join(ca, "ca.crt")) == 0o644
    keys = [m for dst, m in seen if dst.endswith(".key")]
    assert len(keys) == 2 and all(m == 0o600 for m in keys)
    assert not [n for n in os.listdir(ca) if n.endswith(".tmp")]


def test_init_refuses_an_existing_ca(ca_dir):
    with open(os.path.join(ca_dir, "ca.crt"), "rb") as f:
        before = f.read()
    with pytest.raises(PkiError, match="already holds a CA"):
        pki.init_ca(ca_dir)
    with open(os.path.join(ca_dir, "ca.crt"), "rb") as f:
        assert f.read() == before


def test_issue_refuses_overwrite_without_force(ca_dir, tmp_path):
    out = str(tmp_path)
    crt, key = pki.issue(ca_dir, out, node="n2")
    with open(crt, "rb") as f:
        first = f.read()
    with pytest.raises(PkiError, match="already exists"):
        pki.issue(ca_dir, out, node="n2")
    with pytest.raises(PkiError, match="already exists"):
        pki.issue(ca_dir, out, client="n2")  # same files, other kind
    with open(crt, "rb") as f:
        assert f.read() == first
    pki.issue(ca_dir, out, node="n2", force=True)
    with open(crt, "rb") as f:
        assert f.read() != first
    files(out, "n2").check()


def test_issue_refuses_an_out_dir_holding_another_cas_certificate(ca_dir, other_ca_dir):
    with pytest.raises(PkiError, match="another CA's certificate"):
        pki.issue(ca_dir, other_ca_dir, node="n9")
    assert not os.path.exists(os.path.join(other_ca_dir, "n9.key"))


@pytest.mark.parametrize("kwargs,needle", [
    (dict(node="bad name"), "is not 1 to 64"),
    (dict(node=""), "is not 1 to 64"),
    (dict(node="x" * 65), "is not 1 to 64"),
    (dict(client="a/b"), "is not 1 to 64"),
    (dict(client="ca"), "CA's own files"),
    (dict(), "exactly one"),
    (dict(node="a", client="b"), "exactly one"),
    (dict(node="a", read_only=True), "client certificates only"),
    (dict(node="a", subdir="/x"), "client certificates only"),
    (dict(client="a", subdir="relative"), "not an absolute path"),
    (dict(client="a", subdir=""), "not an absolute path"),
    (dict(client="a", subdir="/a/../b"), "not normalized"),
    (dict(client="a", subdir="/a/"), "not normalized"),
    (dict(client="a", subdir="//a"), "not normalized"),
    (dict(client="a", subdir="/a\x00"), "NUL"),
    (dict(client="a", days=0), "days"),
    (dict(client="a", days=100000), "days"),
    (dict(client="a", days=4000), "outlive the CA"),
])
def test_issue_refuses_bad_requests(ca_dir, tmp_path, kwargs, needle):
    with pytest.raises(PkiError, match=needle):
        pki.issue(ca_dir, str(tmp_path), **kwargs)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("uri", [
    f"https://{CLUSTER}/node/n1",
    f"CHORDFS://{CLUSTER}/node/n1",
    f"chordfs://{CLUSTER.upper()}/node/n1",
    f"chordfs://{CLUSTER[:-1]}/node/n1",
    f"chordfs://user@{CLUSTER}/node/n1",
    f"chordfs://{CLUSTER}/node/n1/x",
    f"chordfs://{CLUSTER}/node/",
    f"chordfs://{CLUSTER}/admin/n1",
    f"chordfs://{CLUSTER}/node/n1?ro=1",
    f"chordfs://{CLUSTER}/ca?ro=1",
    f"chordfs://{CLUSTER}/client/c?ro=0",
    f"chordfs://{CLUSTER}/client/c?ro=1&ro=1",
    f"chordfs://{CLUSTER}/client/c?rw=1",
    f"chordfs://{CLUSTER}/client/c?subdir=a",
    f"chordfs://{CLUSTER}/client/c?subdir=%2Fa%2F..",
    f"chordfs://{CLUSTER}/client/c?subdir=%2F%FF",
    f"chordfs://{CLUSTER}/client/c#frag",
    f"chordfs://{CLUSTER}/node/n\n1",
    "",
])
def test_parse_uri_refuses_malformed(uri):
    with pytest.raises(PkiError):
        pki.parse_uri(uri)


_names = st.text(st.sampled_from("abcXYZ019._:-"), min_size=1, max_size=64).filter(lambda n: n != "ca")
_parts = st.text(st.characters(blacklist_characters="/\x00", blacklist_categories=("Cs",)), min_size=1, max_size=12).filter(
    lambda p: p not in (".", ".."))


@given(name=_names, read_only=st.booleans(), parts=st.lists(_parts, max_size=5))
def test_uri_round_trips(name, read_only, parts):
    ident = PeerIdentity(CLUSTER, "client", name, read_only, "/" + "/".join(parts))
    assert pki.parse_uri(ident.uri) == ident


def test_identity_of_cert_wants_exactly_one_chordfs_uri():
    uri = f"chordfs://{CLUSTER}/node/n1"
    cert = {"subjectAltName": (("DNS", "x"), ("URI", "https://x"), ("URI", uri))}
    assert pki.identity_of_cert(cert) == PeerIdentity(CLUSTER, "node", "n1")
    for bad in ({}, None, {"subjectAltName": ()},
                {"subjectAltName": (("URI", uri), ("URI", uri.replace("n1", "n2")))},
                {"subjectAltName": (("URI", f"chordfs://{CLUSTER}/ca"),)}):
        with pytest.raises(PkiError):
            pki.identity_of_cert(bad)


async def handshake(server_ctx, client_ctx):
    """Both ends of one TLS handshake in memory; returns the two streams and
    the server's error, if any."""
    client_raw, server_raw = trio.testing.memory_stream_pair()
    server = trio.SSLStream(server_raw, server_ctx, server_side=True)
    client = trio.SSLStream(client_raw, client_ctx)
    errors = []

    async def serve():
        try:
            await server.do_handshake()
            await server.send_all(b"ok")
        except trio.BrokenResourceError as e:
            errors.append(e)
            await server_raw.aclose()  # the client sees the end instead of waiting
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            try:
                await client.do_handshake()
                await client.receive_some(2)
            except trio.BrokenResourceError:
                pass
    return server, client, errors[0] if errors else None


def _no_cert_client(ca):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(ca)
    return ctx


async def test_handshake_gives_each_side_the_others_identity(ca_dir):
    server, client, error = await handshake(files(ca_dir, "n1").server_context(),
                                            files(ca_dir, "alice").client_context())
    assert error is None
    assert pki.identity_of_cert(server.getpeercert()) == PeerIdentity(CLUSTER, "client", "alice")
    assert pki.identity_of_cert(client.getpeercert()) == PeerIdentity(CLUSTER, "node", "n1")
    assert server.version() == "TLSv1.3"
    # A node dials another node with its own certificate.
    server, _, error = await handshake(files(ca_dir, "n1").server_context(),
                                       files(ca_dir, "n1").client_context())
    assert error is None and pki.identity_of_cert(server.getpeercert()).is_node


async def test_handshake_refuses_a_client_of_another_ca(ca_dir, other_ca_dir):
    stranger = pki.client_context(os.path.join(ca_dir, "ca.crt"),
                                  os.path.join(other_ca_dir, "alice.crt"),
                                  os.path.join(other_ca_dir, "alice.key"))
    _, _, error = await handshake(files(ca_dir, "n1").server_context(), stranger)
    assert "certificate verify failed" in str(error.__cause__)


async def test_handshake_refuses_a_client_without_certificate(ca_dir):
    _, _, error = await handshake(files(ca_dir, "n1").server_context(),
                                  _no_cert_client(os.path.join(ca_dir, "ca.crt")))
    assert "did not return a certificate" in str(error.__cause__)


@pytest.mark.parametrize("server_files,reason", [
    (("other", "n1"), "certificate verify failed"),
    (("ca", "alice"), "unsuitable certificate purpose"),  # a client's certificate cannot serve
])
async def test_client_refuses_a_wrong_server(ca_dir, other_ca_dir, server_files, reason):
    d = {"other": other_ca_dir, "ca": ca_dir}[server_files[0]]
    server_ctx = pki.server_context(os.path.join(ca_dir, "ca.crt"),
                                    os.path.join(d, server_files[1] + ".crt"),
                                    os.path.join(d, server_files[1] + ".key"))
    client_raw, server_raw = trio.testing.memory_stream_pair()
    server = trio.SSLStream(server_raw, server_ctx, server_side=True)
    client = trio.SSLStream(client_raw, files(ca_dir, "alice").client_context())

    async def serve():
        try:
            await server.do_handshake()
        except trio.BrokenResourceError:
            pass
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            with pytest.raises(trio.BrokenResourceError) as caught:
                await client.do_handshake()
            await client_raw.aclose()
    assert reason in str(caught.value.__cause__)


def test_check_finds_wrong_files(ca_dir, other_ca_dir):
    files(ca_dir, "n1").check()
    mismatched = TlsFiles(os.path.join(ca_dir, "ca.crt"), os.path.join(ca_dir, "n1.crt"),
                          os.path.join(ca_dir, "alice.key"))
    with pytest.raises(PkiError, match="is not the key of"):
        mismatched.check()
    with pytest.raises(PkiError, match="not signed by the CA"):
        files(other_ca_dir, "n1", ca=ca_dir).check()
    with pytest.raises(PkiError, match="expired on"):
        files(ca_dir, "n1").check(now=datetime.datetime.now(datetime.timezone.utc)
                                  + datetime.timedelta(days=900))
    with pytest.raises(PkiError, match="cannot read"):
        TlsFiles(os.path.join(ca_dir, "nope.crt"), os.path.join(ca_dir, "n1.crt"),
                 os.path.join(ca_dir, "n1.key")).check()
    with pytest.raises(PkiError, match="not the cluster's CA"):
        TlsFiles(os.path.join(ca_dir, "n1.crt"), os.path.join(ca_dir, "n1.crt"),
                 os.path.join(ca_dir, "n1.key")).check()
    with pytest.raises(PkiError, match="cannot load"):
        pki.server_context(os.path.join(ca_dir, "ca.crt"), os.path.join(ca_dir, "n1.crt"),
                           os.path.join(ca_dir, "alice.key"))


def test_check_refuses_a_ca_with_the_same_cluster_id(ca_dir, tmp_path):
    # Same subject name, other key: only the signature tells them apart.
    twin = str(tmp_path / "twin")
    pki.init_ca(twin, cluster_id=CLUSTER)
    pki.issue(twin, twin, node="n1")
    with pytest.raises(PkiError, match="not signed by the CA"):
        files(twin, "n1", ca=ca_dir).check()


def test_cli_ca_init_and_cert_issue(tmp_path, capsys):
    ca, out = str(tmp_path / "ca"), str(tmp_path / "out")
    assert main(["ca", "init", "--dir", ca, "--cluster-id", CLUSTER]) == 0
    said = capsys.readouterr().out
    assert said == (f"CA for cluster {CLUSTER} in {ca} (keep {ca}/ca.key secret; "
                    f"copy {ca}/ca.crt to every node and client)\n")
    assert main(["cert", "issue", "--ca", ca, "--node", "n1"]) == 0
    assert f"chordfs://{CLUSTER}/node/n1" in capsys.readouterr().out
    assert os.path.exists(os.path.join(ca, "n1.crt")) and mode(os.path.join(ca, "n1.key")) == 0o600
    assert main(["cert", "issue", "--ca", ca, "--client", "web", "--read-only",
                 "--subdir", "/srv/www", "--out", out, "--days", "30"]) == 0
    said = capsys.readouterr().out
    assert "?ro=1&subdir=%2Fsrv%2Fwww" in said and os.path.join(out, "web.key") in said
    assert files(out, "web").identity() == PeerIdentity(CLUSTER, "client", "web", True, "/srv/www")
    assert main(["cert", "issue", "--ca", ca, "--node", "n1", "--force"]) == 0


@pytest.mark.parametrize("argv,needle", [
    (["ca"], "required"),
    (["ca", "init"], "--dir"),
    (["ca", "init", "--dir", "{ca}"], "already holds a CA"),
    (["ca", "init", "--dir", "{tmp}/new", "--cluster-id", "xyz"], "32 lowercase hex"),
    (["ca", "init", "--dir", "{tmp}/new", "--days", "many"], "invalid int"),
    (["cert", "issue", "--ca", "{ca}"], "one of the arguments --node --client is required"),
    (["cert", "issue", "--ca", "{ca}", "--node", "a", "--client", "b"], "not allowed with"),
    (["cert", "issue", "--ca", "{ca}", "--node", "a", "--read-only"], "client certificates only"),
    (["cert", "issue", "--ca", "{ca}", "--client", "a", "--subdir", "x/y"], "not an absolute"),
    (["cert", "issue", "--ca", "{tmp}/none", "--node", "a"], "cannot read"),
    (["cert", "issue", "--ca", "{ca}", "--node", "n1"], "already exists"),
])
def test_cli_bad_arguments_print_one_sentence(ca_dir, tmp_path, capsys, argv, needle):
    argv = [a.format(ca=ca_dir, tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert needle in err and "\n" not in err and err.startswith("chordfs: ") and not captured.out


@pytest.mark.parametrize("argv", [["ca", "--help"], ["ca", "init", "--help"], ["cert", "--help"],
                                  ["cert", "issue", "--help"]])
def test_cli_help(capsys, argv):
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 0 and "usage: chordfs" in capsys.readouterr().out
