@0xcc9ebdacc3ca2adb;
# Ring membership (SWIM) and Chord routing messages. One struct per message
# of server/ring/messages.py, same fields (camelCase here). The cores treat
# every message as best effort, so they travel as one-way deliveries: the
# answer to a request is another message, never the call's return value.

enum Status {
  alive @0;
  suspect @1;
  dead @2;
  left @3;
}

struct Update {
  # "member name has status at incarnation"; higher incarnation wins, then
  # the larger status.
  name @0 :Text;
  incarnation @1 :UInt64;
  status @2 :Status;
}

# --- SWIM failure detector --------------------------------------------------

struct Ping {
  seq @0 :UInt64;
  updates @1 :List(Update);
}

struct Ack {
  seq @0 :UInt64;
  target @1 :Text;          # the node proven alive (indirect probes forward it)
  updates @2 :List(Update);
}

struct PingReq {
  seq @0 :UInt64;
  target @1 :Text;
  updates @2 :List(Update);
}

struct Join {
  incarnation @0 :UInt64;
}

struct JoinReply {
  accepted @0 :Bool;        # false while the seed is not in a ring itself
  members @1 :List(Update);
}

struct Sync {
  reply @0 :Bool;           # true on the pull half, which is not answered
  members @1 :List(Update);
}

# --- Chord maintenance and routing ------------------------------------------

struct FindNext {
  req @0 :UInt64;
  key @1 :UInt64;
  wantReplicas @2 :Bool;
}

struct FindNextReply {
  req @0 :UInt64;
  done @1 :Bool;
  node @2 :Text;            # "" = the answerer is not in a ring
  fallback @3 :Text;
  replicas @4 :List(Text);
}

struct GetNeighbours {
  req @0 :UInt64;
}

struct Neighbours {
  req @0 :UInt64;
  predecessor @1 :Text;
  successors @2 :List(Text);
}

struct Notify {}

struct LeaveNotice {
  predecessor @0 :Text;
  successors @1 :List(Text);
}

struct RingMessage {
  src @0 :Text;             # must equal the authenticated peer
  dst @1 :Text;
  body :union {
    ping @2 :Ping;
    ack @3 :Ack;
    pingReq @4 :PingReq;
    join @5 :Join;
    joinReply @6 :JoinReply;
    sync @7 :Sync;
    findNext @8 :FindNext;
    findNextReply @9 :FindNextReply;
    getNeighbours @10 :GetNeighbours;
    neighbours @11 :Neighbours;
    notify @12 :Notify;
    leaveNotice @13 :LeaveNotice;
  }
}

interface RingPeer {
  deliver @0 (message :RingMessage) -> ();
  # Hands one message to the peer's ring core; returns once queued. Callers
  # do not retry: the protocols tolerate loss.

  members @1 () -> (members :List(Update));
  # The member table, for clients building their one-hop placement view.
}
