"""The Chord ring's pure core: placement math (``ringmath``), SWIM membership
and failure detection (``swim``), Chord maintenance and routing (``chord``),
and ``node.RingNode`` which combines them behind the driver contract
documented in ``node``. Nothing in this package does I/O."""

PURE_CORE = True
