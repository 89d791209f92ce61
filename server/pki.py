"""The cluster's certificates for mutual TLS: one CA per cluster, and one
certificate per node and per client, signed by it.

Who a peer is comes from one URI in its certificate's subjectAltName, never
from a host name (hostname checks are off: an address says neither which node
answers nor what a client may do):

    chordfs://<cluster_id>/ca                    the CA itself
    chordfs://<cluster_id>/node/<name>           a node
    chordfs://<cluster_id>/client/<name>[?ro=1][&subdir=<percent-encoded path>]

The CA's directory holds ``ca.key`` (signs everything; stays with the
operator) and ``ca.crt`` (the trust anchor every node and client loads).
Nodes dial each other, so a node's certificate serves both ends of a
connection; a client's only dials.  Keys are ECDSA P-256: small certificates
and fast handshakes, which matter when every RPC connection makes one.

Invariants: a private key file is mode 0600 from the moment its name exists
(written to a 0600 temp file, fsynced, renamed, directory fsynced); an
existing CA is never overwritten, an issued certificate only with force;
every certificate a CA issues names the CA's cluster id and expires no later
than the CA; ``parse_uri(identity.uri) == identity`` for every valid
PeerIdentity."""

from __future__ import annotations

import datetime
import os
import re
import ssl
import tempfile
from dataclasses import dataclass
from urllib.parse import parse_qs, quote, urlencode, urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# identity, not the chunk store: the CLI imports this module, and the store
# would bring trio and the whole store package with it.
from .identity import fsync_dir, new_cluster_id

SCHEME = "chordfs"
KINDS = ("node", "client", "ca")
CA_KEY, CA_CERT = "ca.key", "ca.crt"
NAME_RE = re.compile(r"[A-Za-z0-9._:-]{1,64}")  # ":": a node name defaults to host:port
CLUSTER_ID_RE = re.compile(r"[0-9a-f]{32}")
URI_RE = re.compile(r"[!-~]+")  # printable ASCII, no space: urlsplit drops tabs and newlines
SUBDIR_BYTES_MAX = 4096         # PATH_MAX
URI_CHARS_MAX = 3 * SUBDIR_BYTES_MAX + 256
PEM_BYTES_MAX = 1 << 20
DAYS_MAX = 36500
# A certificate valid from the moment it is made would be refused for a few
# seconds by a peer whose clock is a little behind.
CLOCK_SKEW = datetime.timedelta(minutes=5)


class PkiError(Exception):
    """A certificate problem; str() is one sentence for an operator."""


@dataclass(frozen=True)
class PeerIdentity:
    cluster_id: str
    kind: str  # "node" | "client" | "ca"
    name: str  # "" for the CA
    read_only: bool = False
    subdir: str = "/"  # "/" is the whole filesystem

    def __post_init__(self) -> None:
        _check_cluster_id(self.cluster_id)
        if self.kind not in KINDS:
            raise PkiError(f"certificate kind {self.kind!r} is none of {', '.join(KINDS)}")
        if self.kind == "ca":
            if self.name:
                raise PkiError("the CA's identity carries no name")
        else:
            _check_name(self.name)
        if self.kind != "client" and (self.read_only or self.subdir != "/"):
            raise PkiError("read-only and subdir are for client certificates only")
        _check_subdir(self.subdir)

    @property
    def is_node(self) -> bool:
        return self.kind == "node"

    @property
    def uri(self) -> str:
        if self.kind == "ca":
            return f"{SCHEME}://{self.cluster_id}/ca"
        query = {}
        if self.read_only:
            query["ro"] = "1"
        if self.subdir != "/":
            query["subdir"] = self.subdir
        base = f"{SCHEME}://{self.cluster_id}/{self.kind}/{self.name}"
        return base + ("?" + urlencode(query, quote_via=quote) if query else "")


def _check_cluster_id(cluster_id: str) -> None:
    if not isinstance(cluster_id, str) or not CLUSTER_ID_RE.fullmatch(cluster_id):
        raise PkiError(f"cluster id {cluster_id!r} is not 32 lowercase hex digits")


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise PkiError(f"name {name!r} is not 1 to 64 of the characters A-Z a-z 0-9 . _ : -")


def _check_subdir(subdir: str) -> None:
    """One spelling per directory, so the server compares prefixes, never
    resolves paths an attacker chose."""
    try:
        size = len(subdir.encode("utf-8"))
    except (AttributeError, UnicodeEncodeError):
        raise PkiError(f"subdir {subdir!r} is not a UTF-8 path") from None
    if size > SUBDIR_BYTES_MAX or "\x00" in subdir:
        raise PkiError(f"subdir {subdir[:80]!r} is longer than {SUBDIR_BYTES_MAX} bytes or holds a NUL")
    if not subdir.startswith("/"):
        raise PkiError(f"subdir {subdir!r} is not an absolute path")
    if subdir != "/" and any(part in ("", ".", "..") for part in subdir[1:].split("/")):
        raise PkiError(f"subdir {subdir!r} is not normalized (no '.', '..', '//' or trailing '/')")


def _check_days(days: int) -> None:
    if not isinstance(days, int) or not 1 <= days <= DAYS_MAX:
        raise PkiError(f"days must be a whole number from 1 to {DAYS_MAX}, not {days!r}")


def parse_uri(uri: str) -> PeerIdentity:
    if (not isinstance(uri, str) or len(uri) > URI_CHARS_MAX or not URI_RE.fullmatch(uri)
            or not uri.startswith(SCHEME + "://")):
        raise PkiError(f"{str(uri)[:80]!r} is not a chordfs:// identity URI")
    try:
        parts = urlsplit(uri)
        query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=True,
                         errors="strict") if parts.query else {}
    except ValueError:
        raise PkiError(f"{uri[:80]!r} is not a well-formed URI") from None
    if parts.fragment:
        raise PkiError(f"{uri[:80]!r} has a fragment")
    segments = parts.path.split("/")
    if parts.path == "/ca" and not parts.query:
        return PeerIdentity(parts.netloc, "ca", "")
    if len(segments) != 3 or segments[0] or segments[1] not in ("node", "client"):
        raise PkiError(f"{uri[:80]!r} names neither /ca, /node/NAME nor /client/NAME")
    if (set(query) - {"ro", "subdir"} or any(len(values) != 1 for values in query.values())
            or query.get("ro", ["1"]) != ["1"]):
        raise PkiError(f"{uri[:80]!r} has a query other than ro=1 and one subdir")
    if query and segments[1] != "client":
        raise PkiError(f"{uri[:80]!r} gives a node read-only or subdir")
    return PeerIdentity(parts.netloc, segments[1], segments[2], "ro" in query,
                        query.get("subdir", ["/"])[0])


def _identity_of_uris(uris: list[str], where: str) -> PeerIdentity:
    ours = [u for u in uris if u[:len(SCHEME) + 3].lower() == SCHEME + "://"]
    if len(ours) != 1:
        raise PkiError(f"{where} carries {len(ours)} chordfs:// URIs, not exactly one")
    return parse_uri(ours[0])


def identity_of_cert(cert: dict | None) -> PeerIdentity:
    """The identity in ``SSLObject.getpeercert()``'s answer: only a
    verified certificate reaches here, so its URI is the CA's word."""
    if not cert:
        raise PkiError("the peer presented no verified certificate")
    uris = [value for kind, value in cert.get("subjectAltName", ()) if kind == "URI"]
    ident = _identity_of_uris(uris, "the peer's certificate")
    if ident.kind == "ca":
        raise PkiError("the peer presented the CA's own certificate, not an issued one")
    return ident


def _x509_identity(cert: x509.Certificate, path: str) -> PeerIdentity:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise PkiError(f"{path} has no subjectAltName, so no chordfs identity") from None
    return _identity_of_uris(san.get_values_for_type(x509.UniformResourceIdentifier), path)


def identity_of_pem(path: str) -> PeerIdentity:
    return _x509_identity(_load_cert(path), path)


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(PEM_BYTES_MAX + 1)
    except OSError as e:
        raise PkiError(f"cannot read {path}: {e.strerror or e}") from None
    if len(data) > PEM_BYTES_MAX:
        raise PkiError(f"{path} is larger than {PEM_BYTES_MAX} bytes, too large for a PEM file")
    return data


def _load_cert(path: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(_read(path))
    except ValueError:
        raise PkiError(f"{path} is not a PEM certificate") from None


def _load_key(path: str) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(_read(path), password=None)
    except (ValueError, TypeError):  # TypeError: the key is encrypted
        raise PkiError(f"{path} is not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{path} is not an ECDSA key")
    return key


def _public_der(key) -> bytes:
    return key.public_bytes(serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def _check_dates(path: str, cert: x509.Certificate, now: datetime.datetime) -> None:
    if now < cert.not_valid_before_utc:
        raise PkiError(f"{path} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
    if now > cert.not_valid_after_utc:
        raise PkiError(f"{path} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")


def _make_dir(path: str) -> None:
    """Created 0700 (it holds keys); an existing one keeps the mode its owner chose."""
    try:
        if not os.path.isdir(path):
            os.makedirs(path, mode=0o700)
            os.chmod(path, 0o700)
    except OSError as e:
        raise PkiError(f"cannot create {path}: {e.strerror or e}") from None


def _publish(path: str, data: bytes, mode: int, *, replace: bool) -> None:
    """Temp file, fsync, rename, fsync of the directory: a reader finds the
    old file or the whole new one.  mkstemp makes the temp file 0600, so a
    key is never readable by others, not even half-written."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # refuses an existing path: of two racing writers, one wins
            except FileExistsError:
                raise PkiError(f"{path} already exists") from None
            except OSError:  # no hard links (FAT on a USB stick): check, then rename
                if os.path.lexists(path):
                    raise PkiError(f"{path} already exists") from None
                os.replace(tmp, path)
        fsync_dir(directory)
    except OSError as e:
        raise PkiError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        if tmp is not None and os.path.lexists(tmp):
            os.unlink(tmp)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _sign(subject: x509.Name, public_key, issuer: x509.Certificate | None,
          issuer_key: ec.EllipticCurvePrivateKey, ident: PeerIdentity, days: int,
          now: datetime.datetime) -> x509.Certificate:
    """One certificate; ``issuer`` None makes it self-signed (the CA)."""
    ca = issuer is None
    ski = x509.SubjectKeyIdentifier.from_public_key(public_key)
    aki = (x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key) if ca else
           x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
               issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value))
    usage = dict(digital_signature=not ca, content_commitment=False, key_encipherment=False,
                 data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
                 encipher_only=False, decipher_only=False)
    builder = (x509.CertificateBuilder()
               .subject_name(subject)
               .issuer_name(subject if ca else issuer.subject)
               .public_key(public_key)
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - CLOCK_SKEW)
               .not_valid_after(now + datetime.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
               .add_extension(x509.KeyUsage(**usage), critical=True)
               .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(ident.uri)]),
                              critical=False)
               .add_extension(ski, critical=False)
               .add_extension(aki, critical=False))
    if not ca:
        purposes = [ExtendedKeyUsageOID.CLIENT_AUTH]
        if ident.is_node:
            purposes.append(ExtendedKeyUsageOID.SERVER_AUTH)
        builder = builder.add_extension(x509.ExtendedKeyUsage(purposes), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _name(common_name: str, cluster_id: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "chordfs"),
                      x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, cluster_id)])


def init_ca(ca_dir: str, *, cluster_id: str | None = None, days: int = 3650) -> str:
    """Make the cluster's CA in ``ca_dir``; returns the cluster id.  Refuses
    a directory that already holds one: replacing a CA orphans every
    certificate it issued."""
    ident = PeerIdentity(new_cluster_id() if cluster_id is None else cluster_id, "ca", "")
    _check_days(days)
    key_path, cert_path = os.path.join(ca_dir, CA_KEY), os.path.join(ca_dir, CA_CERT)
    for path in (key_path, cert_path):
        if os.path.lexists(path):
            raise PkiError(f"{ca_dir} already holds a CA ({path} exists); a cluster's CA is made once")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = _sign(_name("chordfs cluster CA", ident.cluster_id), key.public_key(), None, key,
                 ident, days, now)
    _make_dir(ca_dir)
    _publish(key_path, _pem_key(key), 0o600, replace=False)  # the key first: no CA cert without it
    _publish(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644, replace=False)
    return ident.cluster_id


def _load_ca(ca_dir: str, now: datetime.datetime):
    cert_path, key_path = os.path.join(ca_dir, CA_CERT), os.path.join(ca_dir, CA_KEY)
    cert, key = _load_cert(cert_path), _load_key(key_path)
    if _public_der(key.public_key()) != _public_der(cert.public_key()):
        raise PkiError(f"{key_path} is not the key of {cert_path}")
    ident = _x509_identity(cert, cert_path)
    if ident.kind != "ca":
        raise PkiError(f"{cert_path} is a {ident.kind} certificate, not the cluster's CA")
    _check_dates(cert_path, cert, now)
    return cert, key, ident


def issue(ca_dir: str, out_dir: str, *, node: str | None = None, client: str | None = None,
          read_only: bool = False, subdir: str | None = None, days: int = 825,
          force: bool = False) -> tuple[str, str]:
    """Write ``out_dir/NAME.key`` (0600), ``out_dir/NAME.crt`` and a copy of
    the CA's certificate as ``out_dir/ca.crt``; returns (cert path, key path)."""
    if (node is None) == (client is None):
        raise PkiError("a certificate is for exactly one node or one client")
    if node is not None and (read_only or subdir is not None):
        raise PkiError("read-only and subdir are for client certificates only")
    kind, name = ("node", node) if node is not None else ("client", client)
    _check_name(name)
    if name == "ca":
        raise PkiError("'ca' names the CA's own files; pick another name")
    _check_days(days)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_cert, ca_key, ca_ident = _load_ca(ca_dir, now)
    ident = PeerIdentity(ca_ident.cluster_id, kind, name, read_only, "/" if subdir is None else subdir)
    if now + datetime.timedelta(days=days) > ca_cert.not_valid_after_utc:
        raise PkiError(f"a {days}-day certificate would outlive the CA, which expires on "
                       f"{ca_cert.not_valid_after_utc:%Y-%m-%d}; ask for fewer days")
    cert_path, key_path = os.path.join(out_dir, name + ".crt"), os.path.join(out_dir, name + ".key")
    ca_pem = _read(os.path.join(ca_dir, CA_CERT))
    ca_copy = os.path.join(out_dir, CA_CERT)
    copy_ca = not os.path.lexists(ca_copy) or _read(ca_copy) != ca_pem
    if copy_ca and os.path.lexists(ca_copy) and not force:
        raise PkiError(f"{ca_copy} is another CA's certificate (--force replaces it)")
    for path in (key_path, cert_path):
        if os.path.lexists(path) and not force:
            raise PkiError(f"{path} already exists (--force replaces it)")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _sign(_name(name, ident.cluster_id), key.public_key(), ca_cert, ca_key, ident, days, now)
    _make_dir(out_dir)
    if copy_ca:  # first: rerunning after a crash finds it done, not in the way
        _publish(ca_copy, ca_pem, 0o644, replace=force)
    _publish(key_path, _pem_key(key), 0o600, replace=force)
    _publish(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644, replace=force)
    return cert_path, key_path


def _context(protocol: int, ca: str, cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(protocol)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    if protocol == ssl.PROTOCOL_TLS_CLIENT:
        ctx.check_hostname = False  # the caller checks the peer's URI instead
    ctx.verify_mode = ssl.CERT_REQUIRED
    try:
        ctx.load_verify_locations(cafile=ca)
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as e:
        reason = getattr(e, "strerror", None) or e
        raise PkiError(f"cannot load the TLS files {ca}, {cert} and {key}: {reason}") from None
    return ctx


def server_context(ca: str, cert: str, key: str) -> ssl.SSLContext:
    return _context(ssl.PROTOCOL_TLS_SERVER, ca, cert, key)


def client_context(ca: str, cert: str, key: str) -> ssl.SSLContext:
    return _context(ssl.PROTOCOL_TLS_CLIENT, ca, cert, key)


@dataclass(frozen=True)
class TlsFiles:
    ca: str
    cert: str
    key: str

    def check(self, *, now: datetime.datetime | None = None) -> None:
        """At startup, so a wrong file is one plain sentence rather than every
        handshake failing later with OpenSSL's words."""
        now = now or datetime.datetime.now(datetime.timezone.utc)
        ca, cert, key = _load_cert(self.ca), _load_cert(self.cert), _load_key(self.key)
        ca_ident, ident = _x509_identity(ca, self.ca), _x509_identity(cert, self.cert)
        if ca_ident.kind != "ca":
            raise PkiError(f"{self.ca} is a {ca_ident.kind} certificate, not the cluster's CA")
        if ident.kind == "ca":
            raise PkiError(f"{self.cert} is the CA's own certificate; issue one with chordfs cert issue")
        if _public_der(key.public_key()) != _public_der(cert.public_key()):
            raise PkiError(f"{self.key} is not the key of {self.cert}")
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            raise PkiError(f"{self.cert} was not signed by the CA in {self.ca}") from None
        if ident.cluster_id != ca_ident.cluster_id:
            raise PkiError(f"{self.cert} names cluster {ident.cluster_id}, its CA {ca_ident.cluster_id}")
        _check_dates(self.ca, ca, now)
        _check_dates(self.cert, cert, now)

    def identity(self) -> PeerIdentity:
        return identity_of_pem(self.cert)

    def server_context(self) -> ssl.SSLContext:
        return server_context(self.ca, self.cert, self.key)

    def client_context(self) -> ssl.SSLContext:
        return client_context(self.ca, self.cert, self.key)
