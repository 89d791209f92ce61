@0x9b5612ebae60ca4a;
# Metadata state machine: the commands Raft carries and the results apply
# and the queries return. Each struct mirrors the dataclass of the same name
# in server/meta/types.py field for field (snake_case there, camelCase
# here); server/meta/codec.py converts generically by field name, so a field
# added on one side must be added on the other (tests/meta checks the round
# trip of every type).
#
# Conventions: inode numbers UInt64, times Int64 nanoseconds since the epoch
# (stamped by the proposer), names and targets Data (bytes, not UTF-8),
# errno values UInt32 with 0 meaning success.

struct OptU64 {
  union {
    none @0 :Void;
    some @1 :UInt64;
  }
}

struct OptData {
  union {
    none @0 :Void;
    some @1 :Data;
  }
}

struct TimeSet {
  # setattr time: leave unchanged, the command's nowNs, or an explicit value.
  union {
    omit @0 :Void;
    now @1 :Void;
    ns @2 :Int64;
  }
}

struct Create    { parent @0 :UInt64; name @1 :Data; mode @2 :UInt32; uid @3 :UInt32; gid @4 :UInt32; nowNs @5 :Int64; umask @6 :UInt32; }
struct Mkdir     { parent @0 :UInt64; name @1 :Data; mode @2 :UInt32; uid @3 :UInt32; gid @4 :UInt32; nowNs @5 :Int64; umask @6 :UInt32; }
struct Mknod     { parent @0 :UInt64; name @1 :Data; mode @2 :UInt32; rdev @3 :UInt64; uid @4 :UInt32; gid @5 :UInt32; nowNs @6 :Int64; umask @7 :UInt32; }
struct Symlink   { parent @0 :UInt64; name @1 :Data; target @2 :Data; uid @3 :UInt32; gid @4 :UInt32; nowNs @5 :Int64; }
struct Link      { ino @0 :UInt64; newParent @1 :UInt64; newName @2 :Data; nowNs @3 :Int64; }
struct Unlink    { parent @0 :UInt64; name @1 :Data; nowNs @2 :Int64; keepOrphan @3 :Bool; }
struct Rmdir     { parent @0 :UInt64; name @1 :Data; nowNs @2 :Int64; }

struct Rename {
  parent @0 :UInt64;
  name @1 :Data;
  newParent @2 :UInt64;
  newName @3 :Data;
  flags @4 :UInt32;       # 1 = RENAME_NOREPLACE, 2 = RENAME_EXCHANGE
  nowNs @5 :Int64;
  keepOrphan @6 :Bool;    # a replaced target losing its last link stays as an orphan
}

struct SetAttr {
  ino @0 :UInt64;
  nowNs @1 :Int64;
  mode @2 :OptU64;
  uid @3 :OptU64;
  gid @4 :OptU64;
  size @5 :OptU64;
  atime @6 :TimeSet;
  mtime @7 :TimeSet;
}

struct SetXattr    { ino @0 :UInt64; name @1 :Data; value @2 :Data; flags @3 :UInt32; nowNs @4 :Int64; }
struct RemoveXattr { ino @0 :UInt64; name @1 :Data; nowNs @2 :Int64; }

struct Slice {
  # File bytes [off, off+length): bytes [blockOff, +length) of a block, or
  # `data` itself when blockId is empty (server/meta/types.py Slice).
  off @0 :UInt64;
  length @1 :UInt64;
  blockId @2 :Data;
  blockOff @3 :UInt64;
  blockSize @4 :UInt64;
  data @5 :Data;
  fresh @6 :Bool;
}

struct CommitWrite {
  ino @0 :UInt64;
  size @1 :UInt64;
  nowNs @2 :Int64;
  slices @3 :List(Slice);
  observed @4 :UInt64;
}

struct Compact {
  ino @0 :UInt64;
  off @1 :UInt64;
  length @2 :UInt64;
  expect @3 :Data;
  slices @4 :List(Slice);
  observed @5 :UInt64;
}

struct Tick { nowNs @0 :Int64; }

struct Clone {
  src @0 :UInt64;
  parent @1 :UInt64;
  name @2 :Data;
  mode @3 :UInt32;
  uid @4 :UInt32;
  gid @5 :UInt32;
  nowNs @6 :Int64;
}

struct ReleaseOrphan { ino @0 :UInt64; nowNs @1 :Int64; }
struct ForgetChunks  { chunkIds @0 :List(Data); marks @1 :List(UInt64); }

struct AcquireLease { holder @0 :UInt64; dir @1 :UInt64; epoch @2 :UInt64; durationNs @3 :Int64; inos @4 :UInt64; shared @5 :Bool; }
struct ReleaseLease { holder @0 :UInt64; dir @1 :UInt64; epoch @2 :UInt64; }

struct LeaseBatch {
  # ops: encoded Commands (server/meta/types.py LeaseBatch).
  holder @0 :UInt64;
  seq @1 :UInt64;
  ops @2 :List(Data);
  inos @3 :List(UInt64);
  leases @4 :List(UInt64);
  epochs @5 :List(UInt64);
  wantInos @6 :UInt64;
}

struct OpenSession { session @0 :UInt64; }

struct Sessioned {
  # One client command, applied at most once (server/meta/sessions.py).
  session @0 :UInt64;
  seq @1 :UInt64;
  acked @2 :UInt64;
  ops @3 :List(Data);
}

struct Command {
  # One Raft log entry of the metadata state machine.
  union {
    create @0 :Create;
    mkdir @1 :Mkdir;
    mknod @2 :Mknod;
    symlink @3 :Symlink;
    link @4 :Link;
    unlink @5 :Unlink;
    rmdir @6 :Rmdir;
    rename @7 :Rename;
    setAttr @8 :SetAttr;
    setXattr @9 :SetXattr;
    removeXattr @10 :RemoveXattr;
    commitWrite @11 :CommitWrite;
    releaseOrphan @12 :ReleaseOrphan;
    forgetChunks @13 :ForgetChunks;
    compact @14 :Compact;
    tick @15 :Tick;
    clone @16 :Clone;
    acquireLease @17 :AcquireLease;
    releaseLease @18 :ReleaseLease;
    leaseBatch @19 :LeaseBatch;
    openSession @20 :OpenSession;
    sessioned @21 :Sessioned;
  }
}

struct Attr {
  ino @0 :UInt64;
  mode @1 :UInt32;
  uid @2 :UInt32;
  gid @3 :UInt32;
  size @4 :UInt64;
  nlink @5 :UInt32;
  rdev @6 :UInt64;
  atimeNs @7 :Int64;
  mtimeNs @8 :Int64;
  ctimeNs @9 :Int64;
}

struct Status         { err @0 :UInt32; }
struct EntryReply     { err @0 :UInt32; attr @1 :Attr; parents @2 :List(Attr); xattrs @3 :UInt8; }   # attr absent on error; xattrs: 0 not said, 1 none, 2 some
struct RemoveReply    { err @0 :UInt32; ino @1 :UInt64; nlink @2 :UInt32; parents @3 :List(Attr); }
struct AlreadyApplied { index @0 :UInt64; appliedIndex @1 :UInt64; err @2 :UInt32; }
struct LeaseReply {
  err @0 :UInt32; epoch @1 :UInt64; inoNext @2 :UInt64; inoHi @3 :UInt64; attr @4 :Attr;
  entries @5 :UInt64;
}
struct BatchReply { err @0 :UInt32; results @1 :List(Data); inoNext @2 :UInt64; inoHi @3 :UInt64; }

struct Result {
  # What applying one Command returned.
  union {
    status @0 :Status;
    entryReply @1 :EntryReply;
    removeReply @2 :RemoveReply;
    alreadyApplied @3 :AlreadyApplied;
    leaseReply @4 :LeaseReply;
    batchReply @5 :BatchReply;
  }
}

struct DirEntry { name @0 :Data; ino @1 :UInt64; kind @2 :UInt32; attr @3 :Attr; xattrs @4 :Bool; }   # attr, xattrs only in readdirplus

struct DirPage {
  err @0 :UInt32;
  entries @1 :List(DirEntry);   # not sent: the columns below carry the entries
  cursor @2 :Data;
  done @3 :Bool;
  parent @4 :UInt64;
  # The entries column by column (server/meta/codec.py): pycapnp reads a
  # list of structs field by field, 34 us an entry with its Attr; a list of
  # numbers comes out whole.
  names @5 :List(Data);
  inos @6 :List(UInt64);
  kinds @7 :List(UInt32);
  hasXattrs @8 :List(Bool);     # readdirplus only
  attrs @9 :List(UInt64);       # readdirplus only: each entry's Attr ino..rdev, in order
  times @10 :List(Int64);       # readdirplus only: each entry's atimeNs, mtimeNs, ctimeNs
  hasAttr @11 :List(Bool);      # readdirplus only: false where the entry has none (zeros above)
}

struct BytesReply { err @0 :UInt32; value @1 :Data; }
struct NamesReply { err @0 :UInt32; names @1 :List(Data); }

struct ManifestPage {
  err @0 :UInt32;
  size @1 :UInt64;
  chunkBytes @2 :UInt64;
  slices @3 :List(Slice);
  nextOff @4 :UInt64;
  done @5 :Bool;
  attr @6 :Attr;  # absent on error
}

struct ManifestPages {
  pages @0 :List(ManifestPage);   # the first page of each of a prefix of the files asked
}

struct StatFs {
  inodes @0 :UInt64;
  bytes @1 :UInt64;
  chunks @2 :UInt64;
  nextIno @3 :UInt64;
  appliedIndex @4 :UInt64;
  nameBytesMax @5 :UInt32;
}

# ------------------------------------------------------------------ service
# Metadata changes go through Raft.propose (raft.capnp) as encoded Commands;
# reads come here.  A linearizable query first confirms, through ReadIndex,
# that this node has applied everything committed when the query arrived.

struct Query {
  linearizable @0 :Bool;
  union {
    lookup :group { parent @1 :UInt64; name @2 :Data; }
    getattr :group { ino @3 :UInt64; }
    readdir :group { dirIno @4 :UInt64; cursor @5 :Data; limit @6 :UInt32; plus @7 :Bool; }
    readlink :group { linkIno @8 :UInt64; }
    getxattr :group { xattrIno @9 :UInt64; xattrName @10 :Data; }
    listxattr :group { listIno @11 :UInt64; }
    statfs @12 :Void;
    manifest :group { fileIno @13 :UInt64; startOff @14 :UInt64; pageLimit @15 :UInt32; }
    manifests :group { manifestInos @17 :List(UInt64); }   # -> ManifestPages
  }
  holder @16 :UInt64;  # the asking mount's lease session (0: none): its own leases are not recalled
}

interface Metadata {
  query @0 (query :Query, forwarded :Bool) -> (reply :Data, notLeader :Bool, leaderHint :UInt64,
                                               leaderAddr :Text);
  # reply is the codec encoding of the query's reply type (EntryReply,
  # DirPage, BytesReply, NamesReply, StatFs, ManifestPage, ManifestPages).  A follower
  # forwards a linearizable query once to the leader it knows; notLeader
  # when none is known (or the forward failed).

  leaseEvents @1 (holder :UInt64, waitMs :UInt32) -> (recall :List(UInt64), notLeader :Bool,
                                                      leaderHint :UInt64, leaderAddr :Text);
  # A lease holder's long poll on the leader: the directories it is asked
  # to give back (flush, then release), or an empty list after waitMs.
}
