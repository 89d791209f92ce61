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
  step @0 (messages :List(RaftMessage)) -> (accepted :UInt32);
  # Delivers a batch of messages in order.  The receiver queues them for its
  # core and answers at once; `accepted` counts those queued (a full queue
  # drops the rest: Raft tolerates loss, and the sender retries by protocol).

  propose @1 (command :Data, forwarded :Bool) -> (index :UInt64, term :UInt64,
                                                 result :Data, leaderHint :UInt64,
                                                 notLeader :Bool);
  # Proposes a command and waits until it is applied, returning the state
  # machine's result.  A follower forwards once (forwarded=false) to the
  # leader it knows; otherwise notLeader with leaderHint (0 if unknown).

  status @2 () -> (id :UInt64, term :UInt64, leader :UInt64, role :Text,
                   commit :UInt64, applied :UInt64, lastIndex :UInt64,
                   voters :List(UInt64), learners :List(UInt64));
  # This node's view: leader 0 when unknown.

  addLearner @3 (name :Text) -> (added :Bool, notLeader :Bool, leaderHint :UInt64);
  # Asks the leader to add node `name` (its host:port) as a non-voting
  # learner; the leader promotes caught-up learners to voters later.
}
