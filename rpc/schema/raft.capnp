@0xaeb328f451721e95;
# Raft between nodes.  The pure core (server/raft/) speaks Python values;
# server/raft/wire.py converts them to and from these structs.  Node ids are
# the 64-bit ring ids of the nodes.

struct Entry {
  index @0 :UInt64;
  term @1 :UInt64;
  kind @2 :UInt8;          # 0 command, 1 configuration, 2 no-op
  data @3 :Data;
}

struct Membership {
  voters @0 :List(UInt64);
  learners @1 :List(UInt64);
  names @2 :List(Text);    # addresses, one per id of voters then learners ("" unknown)
  paramKeys @3 :List(Text);     # cluster-wide settings: placement, chunk size
  paramValues @4 :List(Int64);
}

struct Snapshot {
  index @0 :UInt64;
  term @1 :UInt64;
  membership @2 :Membership;
  data @3 :Data;
  # A snapshot larger than one frame travels as parts, one per step call, in
  # order on one connection: `data` holds bytes [offset, offset+len) of a
  # snapshot of `total` bytes.  total = 0: `data` is the whole snapshot.
  total @4 :UInt64;
  offset @5 :UInt64;
}

struct RaftMessage {
  from @0 :UInt64;
  to @1 :UInt64;
  term @2 :UInt64;
  union {
    requestVote :group {
      lastLogIndex @3 :UInt64;
      lastLogTerm @4 :UInt64;
      preVote @5 :Bool;
      transfer @6 :Bool;
    }
    voteResponse :group {
      granted @7 :Bool;
      preVoteResponse @8 :Bool;
    }
    appendEntries :group {
      prevIndex @9 :UInt64;
      prevTerm @10 :UInt64;
      entries @11 :List(Entry);
      commit @12 :UInt64;
    }
    appendResponse :group {
      success @13 :Bool;
      matchIndex @14 :UInt64;
      rejectIndex @15 :UInt64;
      hintIndex @16 :UInt64;
      hintTerm @17 :UInt64;
    }
    installSnapshot @18 :Snapshot;
    heartbeat :group {
      heartbeatCommit @19 :UInt64;
      readSeq @20 :UInt64;
    }
    heartbeatResponse :group {
      responseReadSeq @21 :UInt64;
    }
    timeoutNow @22 :Void;
  }
}

interface Raft {
  step @0 (messages :List(RaftMessage), clusterId :Text, fromAddr :Text) -> (accepted :UInt32);
  # Delivers a batch of messages in order.  The receiver queues them for its
  # core and answers at once; `accepted` counts those queued (a full queue
  # drops the rest: Raft tolerates loss, and the sender retries by protocol).
  # A batch from another cluster, or addressed to another node id than the
  # receiver's, is refused (a machine whose disk was replaced serves a new
  # id at the old address: messages for the old id must not reach it).

  exchange @5 (messages :List(RaftMessage), clusterId :Text, fromAddr :Text)
      -> (accepted :UInt32, answers :List(RaftMessage));
  # step, answered once the receiver's driver has handled the batch: the
  # messages it then has for the sender (a follower's answer to appends,
  # after its fsync) ride back in `answers` instead of a call of their own.

  propose @1 (command :Data, forwarded :Bool) -> (index :UInt64, term :UInt64,
                                                 result :Data, leaderHint :UInt64,
                                                 notLeader :Bool, leaderAddr :Text);
  # Proposes a command and waits until it is applied, returning the state
  # machine's result.  A follower forwards once (forwarded=false) to the
  # leader it knows; otherwise notLeader with leaderHint (0 if unknown).

  status @2 () -> (id :UInt64, term :UInt64, leader :UInt64, role :Text,
                   commit :UInt64, applied :UInt64, lastIndex :UInt64,
                   voters :List(UInt64), learners :List(UInt64),
                   clusterId :Text, leaderAddr :Text, members :List(Member),
                   paramKeys :List(Text), paramValues :List(Int64), configIndex :UInt64);
  # This node's view: leader 0 when unknown.  `members`: the configuration
  # with addresses; on the leader also how far each member's log matches
  # and whether it answered within an election timeout.  `param*`: the
  # cluster-wide settings (placement, chunk size) of that configuration,
  # whose log index `configIndex` is the map epoch.

  addLearner @3 (name :Text, nodeId :UInt64, clusterId :Text)
      -> (added :Bool, notLeader :Bool, leaderHint :UInt64, leaderAddr :Text,
          clusterId :Text, refused :Text, config :Data);
  # Asks the leader to add node `nodeId`, served at `name` (host:port), as a
  # non-voting learner; the leader promotes caught-up learners to voters
  # later.  `clusterId` is the joiner's, "" if it has none yet; the answer
  # carries the cluster's, and `config` its configuration (the encoded
  # Membership: settings included).  `refused` says in one sentence why the node may
  # not join (another cluster; its address belongs to another member).

  changeMember @4 (op :Text, nodeId :UInt64, force :Bool)
      -> (done :Bool, notLeader :Bool, leaderAddr :Text, refused :Text);
  # On the leader: op "remove" (refused when the voters left would have no
  # live quorum, unless force) or "promote" (a learner becomes a voter).
  # Answers once the change is committed.
}

struct Member {
  id @0 :UInt64;
  name @1 :Text;
  voter @2 :Bool;
  match @3 :UInt64;
  live @4 :Bool;
}
