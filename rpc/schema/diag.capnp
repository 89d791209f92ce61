@0xd0b4c7e2a91f3e57;
# Diagnostics served by every chordfs node: liveness, echo for measuring the
# RPC layer, and deliberate failures so clients' error paths can be tested.

interface Diag {
  ping @0 () -> (nodeName :Text, nowNs :Int64);
  # Cheap liveness check; nowNs is the node's wall clock for skew reports.

  echo @1 (data :Data) -> (data :Data);
  # Returns the payload unchanged.

  fail @2 (kind :Text, message :Text) -> ();
  # Raises an error of the named kind ("failed", "overloaded",
  # "disconnected", "unimplemented") so typed errors can be observed.

  sleep @3 (ms :UInt32) -> (completed :Bool);
  # Waits ms milliseconds (capped by the server) to exercise deadlines and
  # cancellation.

  report @4 () -> (json :Text);
  # The node's own state for operators (server/report.py): Raft, disk and
  # blocks, ring view, repair/scrub/GC passes; JSON with stable keys.

  maintain @5 (action :Text, argsJson :Text) -> (json :Text);
  # Node-only. Starts a pass now: "heal" (repair), "scrub" (argsJson may
  # give {"bytes_per_s": N}) or "census" (the count of under-replicated and
  # missing blocks; only the metadata leader counts). Answers
  # {"target": N}: the pass counter in the node report that marks it done.
}
