"""One Cap'n Proto RPC connection (two-party vat network) on a trio stream.

Implements level 0 of the protocol: Bootstrap, Call, Return (results,
exception, canceled), Finish, Release, Abort and Unimplemented; calls may
target an imported capability or the promised answer of a bootstrap question
(pycapnp clients pipeline on bootstrap).  Both sides are symmetric: either may
export a bootstrap object and either may call.

Order of work: the reader task decodes frames and dispatches each message at
once (calls run as tasks in the connection's nursery); every outgoing frame
goes through one bounded queue to the writer task, which coalesces queued
frames into one ``send_all``.  FIFO order of that queue is relied on: a Finish
that frees a question id is queued before any Call that reuses the id.

Invariants:
- a question id is reused only after its Return arrived and its Finish was
  queued (or the Return said ``noFinishNeeded``);
- an answer entry lives until its Return is sent, and for the bootstrap
  answer (which holds a capability) until its Finish arrives;
- every bound in ``Limits`` holds: frames, queue, calls in flight each way.
A protocol violation or a frame beyond the limits closes this connection
(after an Abort with the reason) and never affects others."""

import itertools
import logging
import time

import capnp
import outcome
import trio

from . import envelope, errors, frames, schema
from .capptr import place_capability
from .deadlines import Deadlines
from .errors import ConnectionLost, ProtocolError
from .exports import ExportTable
from .framing import FrameDecoder, frame_segments
from .interface import Capability, Interface, fill_struct
from .limits import Limits
from .logfmt import kv
from .outbox import Outbox

log = logging.getLogger("chordfs.rpc")

_RPC = schema.rpc_protocol()
Message = _RPC.Message
_conn_ids = itertools.count(1)


def _bootstrap_cap_path() -> list[int]:
    """Pointer indexes from Message down to Return.results.content."""
    def ptr(struct, field):
        return struct.schema.fields[field].proto.slot.offset
    return [ptr(Message, "return"), ptr(_RPC.Return, "results"), ptr(_RPC.Payload, "content")]


_BOOTSTRAP_CAP_PATH = _bootstrap_cap_path()


class _PeerAborted(Exception):
    pass


class _Question:
    __slots__ = ("task", "result_type", "result", "error", "returned", "abandoned", "bootstrap")

    def __init__(self, result_type, bootstrap=False):
        self.task = None  # the waiting caller, while it waits
        self.result_type = result_type
        self.result = None
        self.error = None
        self.returned = False
        self.abandoned = False
        self.bootstrap = bootstrap


class _Answer:
    __slots__ = ("scope", "finished", "cap_obj", "exports", "params_bytes")

    def __init__(self, cap_obj=None, exports=()):
        self.scope = None
        self.finished = False
        self.params_bytes = 0
        self.cap_obj = cap_obj  # set only for answers whose result is a capability
        self.exports = list(exports)


class Connection:
    def __init__(self, stream, *, bootstrap=None, limits: Limits = Limits(), peer: str = "",
                 observe=None):
        self._stream = stream
        # observe(method name, seconds, error, "Cancelled" or None) after each
        # call served (metrics); it must not block or raise.
        self._observe = observe
        self._bootstrap = bootstrap
        self.limits = limits
        self.id = next(_conn_ids)
        self.peer = peer
        self._outbox = Outbox(limits.send_queue_frames_max)
        self._questions: dict[int, _Question] = {}
        self._free_qids: list[int] = []
        self._next_qid = 0
        self._outstanding = 0
        self._outstanding_lot = trio.lowlevel.ParkingLot()
        self._deadlines = Deadlines()
        self._answers: dict[int, _Answer] = {}
        self._running_calls = 0
        self._inflight_bytes = 0  # frames of the running calls' params
        self._frame_bytes = 0  # of the frame being dispatched
        self._bytes_freed = trio.Event()
        self._exports = ExportTable()
        self._result_words: dict[str, int] = {}  # method name -> first segment words
        self._imports: dict[int, int] = {}  # import id -> refcount held
        self._nursery = None
        self.closed_writer = trio.Event()
        self._closed = False
        self.close_reason = ""
        self.closed_event = trio.Event()

    # ------------------------------------------------------------------ life

    @property
    def is_closed(self) -> bool:
        return self._closed

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Serve the connection until it closes; returns then (never raises
        for peer misbehaviour or loss: the reason is in ``close_reason``)."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._writer)
                nursery.start_soon(self._deadlines.run, self._expire,
                                   lambda q: q.task is not None, lambda: len(self._questions))
                task_status.started(self)
                reason, abort = await self._read_until_closed()
                await self._shutdown(reason, abort)
                nursery.cancel_scope.cancel()
        finally:
            self._mark_closed(self.close_reason or "connection closed")
            # The served object may hold per-connection state to release
            # (a half-received snapshot file, a per-peer count).
            closed = getattr(self._bootstrap, "rpc_closed", None)
            if closed is not None:
                try:
                    closed()
                except Exception as e:  # noqa: BLE001 - never stops the close
                    log.warning(kv("rpc.closed_hook_failed", conn=self.id, error=repr(e)))
            with trio.CancelScope(shield=True, deadline=trio.current_time() + 1.0):
                try:
                    await self._stream.aclose()
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    pass
            self.closed_event.set()

    def close(self, reason: str = "closed locally") -> None:
        """Close without an Abort; pending calls fail with ConnectionLost."""
        self._mark_closed(reason)
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def _mark_closed(self, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        self.close_reason = reason
        lost = ConnectionLost(f"connection to {self.peer or 'peer'} closed: {reason}")
        self._outbox.close()
        for q in self._questions.values():
            if not q.returned:
                q.error, q.returned = lost, True
                self._wake(q)
        self._outstanding_lot.unpark_all()

    async def _shutdown(self, reason: str, abort: bool) -> None:
        if self._closed:
            # Closed locally while the reader was still handling a frame
            # (say a late Return of a call close() had already failed):
            # nothing of it is the peer's fault, and the outbox is gone.
            return
        if abort:
            log.warning(kv("rpc.abort", conn=self.id, peer=self.peer, reason=reason))
            queued = self._outbox.put_nowait(frames.abort_frame(reason))
            self._mark_closed(reason)
            if not queued:
                return
            # Let the writer flush the Abort, but never wait long for a peer
            # that stopped reading.
            with trio.move_on_after(1.0):
                await self.closed_writer.wait()
        else:
            log.info(kv("rpc.closed", conn=self.id, peer=self.peer, reason=reason))
            self._mark_closed(reason)

    # --------------------------------------------------------------- reader

    async def _read_until_closed(self) -> tuple[str, bool]:
        decoder = FrameDecoder(self.limits)
        stream = self._stream
        # A plain TCP stream, or TLS (rpc/tls.py), lets the body of a big
        # frame (a chunk) be received straight into its buffer: no bytes
        # object per receive and no copy after it. Other streams go through
        # receive_some.
        if isinstance(stream, trio.SocketStream):
            recv_into = stream.socket.recv_into
        else:
            recv_into = getattr(stream, "receive_into", None)
        try:
            while True:
                while self._inflight_bytes >= self.limits.inflight_bytes_max:
                    await self._bytes_freed.wait()
                    self._bytes_freed = trio.Event()
                target = decoder.big_target() if recv_into is not None else None
                if target is not None:
                    with target:
                        count = await recv_into(target)
                    if count:
                        decoder.big_filled(count)
                        while (segments := decoder.next_frame()) is not None:
                            await self._dispatch(segments)
                        continue
                    return "peer closed the stream in the middle of a frame (truncated message)", True
                want = min(max(65536, decoder.wanted_bytes()), 256 * 1024)
                data = await stream.receive_some(want)
                if not data:
                    pending = decoder.pending_bytes + (decoder.wanted_bytes() and 1)
                    if pending:
                        return "peer closed the stream in the middle of a frame (truncated message)", True
                    return "peer closed the stream", False
                decoder.feed(data)
                while (segments := decoder.next_frame()) is not None:
                    await self._dispatch(segments)
        except ProtocolError as e:
            return f"protocol error: {e}", True
        except _PeerAborted as e:
            return f"peer aborted: {e}", False
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            return f"stream error: {e!r}", False

    async def _dispatch(self, segments: list[bytes]) -> None:
        self._frame_bytes = sum(len(s) for s in segments)
        try:
            fast = envelope.decode(segments, self.limits.traversal_words_max, self.limits.nesting_max)
            if fast is not None:
                if type(fast) is envelope.FastCall:
                    await self._on_fast_call(fast)
                else:
                    self._on_fast_return(fast)
                return
        except capnp.KjException as e:
            raise ProtocolError(f"malformed message: {_first_line(e)}") from None
        try:
            msg = Message.from_segments(
                segments,
                traversal_limit_in_words=self.limits.traversal_words_max,
                nesting_limit=self.limits.nesting_max,
            )
            # Fields are checked as they are read (pycapnp raises KjException);
            # never call total_size here: on a bad pointer it aborts the process.
            which = msg.which()
        except capnp.KjException as e:
            raise ProtocolError(f"malformed message: {_first_line(e)}") from None
        try:
            handler = self._HANDLERS.get(which)
            if handler is None:
                await self._send_unimplemented(msg)
            else:
                await handler(self, msg)
        except capnp.KjException as e:
            raise ProtocolError(f"malformed {which} message: {_first_line(e)}") from None

    async def _send_unimplemented(self, msg) -> None:
        reply = Message.new_message()
        reply.unimplemented = msg
        await self._send(reply.to_bytes())

    # --------------------------------------------------------------- writer

    async def _writer(self) -> None:
        outbox, stream = self._outbox, self._stream
        batch_max = self.limits.write_batch_bytes
        try:
            while batch := await outbox.take(batch_max):
                for chunk in frames.coalesce(batch):
                    await stream.send_all(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            self._mark_closed(f"stream error while sending: {e!r}")
            if self._nursery is not None:
                self._nursery.cancel_scope.cancel()
        finally:
            self.closed_writer.set()

    def _lost(self) -> ConnectionLost:
        return ConnectionLost(f"connection to {self.peer or 'peer'} closed: {self.close_reason}")

    async def _send(self, frame: bytes) -> None:
        if self._closed:
            raise self._lost()
        try:
            await self._outbox.put(frame)
        except trio.ClosedResourceError:
            raise self._lost() from None

    def _send_soon(self, frame: bytes, after=None) -> None:
        """Queue a control frame from code that must not block (cleanup,
        cancellation); ``after`` runs once the frame is queued."""
        if self._closed:
            return
        if not self._outbox.put_nowait(frame):
            self._nursery.start_soon(self._send_later, frame, after)
        elif after is not None:
            after()

    async def _send_later(self, frame: bytes, after) -> None:
        try:
            await self._send(frame)
        except ConnectionLost:
            return
        if after is not None:
            after()

    # --------------------------------------------------------- client side

    def _alloc_qid(self) -> int:
        if self._free_qids:
            return self._free_qids.pop()
        qid = self._next_qid
        self._next_qid += 1
        return qid

    def _free_qid(self, qid: int) -> None:
        del self._questions[qid]
        self._free_qids.append(qid)

    async def bootstrap(self, interface, *, timeout_s: float | None = None) -> Capability:
        """Ask the peer for its bootstrap capability."""
        iface = Interface.of(interface)
        msg = Message.new_message()
        qid = self._alloc_qid()
        msg.init("bootstrap").questionId = qid
        q = _Question(None, bootstrap=True)
        import_id = await self._ask(qid, q, msg.to_bytes(), timeout_s)
        return Capability(self, ("import", import_id), iface)

    async def call(self, target: tuple, interface_id: int, method, fill, timeout_s, size_hint=0):
        """``size_hint``: about how many payload bytes ``fill`` writes."""
        while self._outstanding >= self.limits.outstanding_calls_max and not self._closed:
            await self._outstanding_lot.park()
        self._outstanding += 1
        try:
            qid = self._alloc_qid()
            frame = None
            if target[0] == "import":
                payload, params = envelope.new_payload(
                    method.param_type, envelope.words_for(size_hint) if size_hint > 32768 else 0)
                if fill is not None:
                    fill(params)
                frame = envelope.encode_call(qid, target[1], interface_id, method.ordinal, payload)
            if frame is None:
                frame = frames.call_frame(qid, target, interface_id, method, fill)
            return await self._ask(qid, _Question(method.result_type), frame, timeout_s)
        finally:
            self._outstanding -= 1
            if self._outstanding_lot:
                self._outstanding_lot.unpark()

    async def _ask(self, qid: int, q: _Question, frame: bytes, timeout_s):
        """Send a question and wait for its Return, its deadline, or our
        cancellation (the latter two send Finish)."""
        try:
            await self._send(frame)
        except BaseException:
            self._free_qids.append(qid)  # never sent: the id is still ours
            raise
        self._questions[qid] = q
        timeout = self.limits.call_timeout_s if timeout_s is None else timeout_s
        self._deadlines.add(trio.current_time() + timeout, qid, q)
        if not q.returned:
            q.task = trio.lowlevel.current_task()

            def abort(_raise_cancel):
                q.task = None
                self._abandon(qid, q)
                return trio.lowlevel.Abort.SUCCEEDED

            await trio.lowlevel.wait_task_rescheduled(abort)
        else:
            await trio.lowlevel.checkpoint()
        if q.error is not None:
            raise q.error
        return q.result

    def _wake(self, q: _Question) -> None:
        task, q.task = q.task, None
        if task is not None:
            trio.lowlevel.reschedule(task, outcome.Value(None))

    def _expire(self, qid: int, q: _Question) -> None:
        self._abandon(qid, q)
        q.error = errors.CallTimeout(f"call {qid} to {self.peer or 'peer'} passed its deadline")
        self._wake(q)

    def _abandon(self, qid: int, q: _Question) -> None:
        """The caller stopped waiting: send Finish (asks the callee to cancel)
        and keep the id reserved until the Return arrives."""
        q.abandoned = True
        if not self._closed:
            self._send_soon(frames.finish_frame(qid, release_caps=True))

    async def _on_return(self, msg) -> None:
        ret = getattr(msg, "return")
        qid = ret.answerId
        q = self._question_for_return(qid)
        which = ret.which()
        result, error = None, None
        if which == "results":
            if q.bootstrap and q.abandoned:
                # Our Finish (releaseResultCaps) gives the capability back;
                # importing or releasing it here would count it twice.
                result = None
            elif q.bootstrap:
                result, error = self._import_bootstrap(ret.results)
            else:
                result = ret.results.content.as_struct(q.result_type)
        elif which == "exception":
            exc = ret.exception
            error = errors.from_wire(str(exc.type), exc.reason)
        elif which == "canceled":
            error = errors.Failed("call canceled by callee")
        else:
            error = errors.Unimplemented(f"return of kind {which} is not supported")
        self._complete(qid, q, result, error, ret.noFinishNeeded)

    def _on_fast_return(self, fast) -> None:
        q = self._question_for_return(fast.qid)
        if q.bootstrap or fast.payload._has("capTable"):
            raise ProtocolError("capabilities in a call's results are not supported")
        self._complete(fast.qid, q, fast.payload.content.as_struct(q.result_type), None,
                       fast.no_finish)

    def _question_for_return(self, qid: int) -> _Question:
        q = self._questions.get(qid)
        if q is None or q.returned:
            raise ProtocolError(f"return for unknown question {qid}")
        return q

    def _complete(self, qid: int, q: _Question, result, error, no_finish_needed: bool) -> None:
        if q.abandoned:
            self._free_qid(qid)  # our Finish, releasing any capability, was already queued
            return
        q.result, q.error, q.returned = result, error, True
        if no_finish_needed:
            self._free_qid(qid)
        else:
            self._send_soon(frames.finish_frame(qid, release_caps=not q.bootstrap),
                            after=lambda: self._free_qid(qid))
        self._wake(q)

    def _import_bootstrap(self, payload):
        table = payload.capTable
        if len(table) != 1:
            return None, ProtocolError(f"bootstrap returned {len(table)} capabilities")
        desc = table[0]
        kind = desc.which()
        if kind not in ("senderHosted", "senderPromise"):
            return None, errors.Unimplemented(f"bootstrap capability of kind {kind}")
        import_id = getattr(desc, kind)
        self._imports[import_id] = self._imports.get(import_id, 0) + 1
        return import_id, None

    async def release_import(self, target: tuple) -> None:
        if target[0] != "import" or target[1] not in self._imports or self._closed:
            return
        count = self._imports.pop(target[1])
        await self._send(frames.release_frame(target[1], count))

    async def _on_unimplemented(self, msg) -> None:
        echoed = msg.unimplemented
        kind = echoed.which()
        if kind == "call":
            qid = echoed.call.questionId
        elif kind == "bootstrap":
            qid = echoed.bootstrap.questionId
        else:
            return  # e.g. a Release or Finish the peer ignores: nothing waits on it
        q = self._questions.get(qid)
        if q is not None and not q.returned:
            q.error, q.returned = errors.Unimplemented(f"peer does not implement {kind}"), True
            self._free_qid(qid)
            self._wake(q)

    async def _on_abort(self, msg) -> None:
        raise _PeerAborted(msg.abort.reason)

    # --------------------------------------------------------- server side

    async def _on_bootstrap(self, msg) -> None:
        qid = msg.bootstrap.questionId
        if qid in self._answers:
            raise ProtocolError(f"question id {qid} reused while its answer is live")
        reply = Message.new_message()
        ret = reply.init("return")
        ret.answerId = qid
        if self._bootstrap is None:
            frames.set_exception(ret, "failed", "no bootstrap capability is offered here")
            ret.noFinishNeeded = True
            await self._send(reply.to_bytes())
            return
        export_id = self._exports.export(self._bootstrap)
        self._answers[qid] = _Answer(self._bootstrap, [export_id])
        payload = ret.init("results")
        payload.init("capTable", 1)[0].senderHosted = export_id
        segments = place_capability(reply.to_segments(), _BOOTSTRAP_CAP_PATH, 0)
        await self._send(frame_segments(segments))

    async def _on_finish(self, msg) -> None:
        finish = msg.finish
        answer = self._answers.get(finish.questionId)
        if answer is None:
            return  # we said noFinishNeeded; the spec asks us to ignore it
        answer.finished = True
        if answer.scope is not None:
            answer.scope.cancel()
            return
        del self._answers[finish.questionId]
        if finish.releaseResultCaps:
            for export_id in answer.exports:
                self._exports.release(export_id, 1)

    async def _on_release(self, msg) -> None:
        rel = msg.release
        self._exports.release(rel.id, rel.referenceCount)

    def _resolve_target(self, target):
        kind = target.which()
        if kind == "importedCap":
            return self._exports.get(target.importedCap)
        if kind == "promisedAnswer":
            promised = target.promisedAnswer
            answer = self._answers.get(promised.questionId)
            if answer is not None and answer.cap_obj is not None and len(promised.transform) == 0:
                return answer.cap_obj
        return None

    async def _on_call(self, msg) -> None:
        call = msg.call
        problem = None
        if call._has("sendResultsTo") and call.sendResultsTo.which() != "caller":
            problem = ("unimplemented", "results can only be sent to the caller")
        obj = self._resolve_target(call.target)
        await self._accept_call(call.questionId, obj, call.interfaceId, call.methodId,
                                call.params, problem)

    async def _on_fast_call(self, fast) -> None:
        await self._accept_call(fast.qid, self._exports.get(fast.import_id), fast.interface_id,
                                fast.method_id, fast.payload, None)

    async def _accept_call(self, qid, obj, interface_id, method_id, params_payload, problem):
        if qid in self._answers:
            raise ProtocolError(f"question id {qid} reused while its answer is live")
        if params_payload._has("capTable"):
            self._release_param_caps(params_payload)
        entry = obj.rpc_lookup(interface_id, method_id) if obj is not None else None
        problem = problem or self._call_problem(interface_id, method_id, obj, entry)
        if problem is not None:
            await self._send(frames.exception_frame(qid, *problem))
            return
        bound, method, inline = entry
        params = params_payload.content.as_struct(method.param_type)
        if inline:
            await self._send(self._run_inline(qid, bound, method, params))
            return
        answer = _Answer()
        answer.params_bytes = self._frame_bytes
        self._inflight_bytes += answer.params_bytes
        self._answers[qid] = answer
        self._running_calls += 1
        self._nursery.start_soon(self._serve_call, qid, answer, bound, method, params)

    def _call_problem(self, interface_id, method_id, obj, entry):
        if obj is None:
            return "failed", "call target is not a capability exported on this connection"
        if entry is None:
            return ("unimplemented",
                    f"method {method_id} of interface {interface_id:#x} is not implemented")
        if self._running_calls >= self.limits.inflight_calls_max:
            return "overloaded", f"more than {self.limits.inflight_calls_max} calls in flight"
        return None

    def _release_param_caps(self, payload) -> None:
        # Level 0 never holds capabilities passed in params: give them back.
        for desc in payload.capTable:
            kind = desc.which()
            if kind in ("senderHosted", "senderPromise"):
                self._send_soon(frames.release_frame(getattr(desc, kind), 1))

    def _result_payload(self, method):
        return envelope.new_payload(method.result_type, self._result_words.get(method.name, 0))

    def _results_frame(self, qid, method, payload):
        frame, spilled = frames.results_frame(qid, payload)
        if spilled:
            # Results of this method outgrow one segment: size the next ones
            # to fit, so they take the fast path without the extra copy.
            self._result_words[method.name] = min(envelope.words_for(spilled),
                                                  self.limits.frame_bytes_max // 8)
        return frame

    def _run_inline(self, qid, bound, method, params) -> bytes:
        """Drive an inline method's coroutine to completion by hand: it must
        finish without yielding to trio."""
        payload, results = self._result_payload(method)
        observe = self._observe
        started = time.perf_counter() if observe is not None else 0.0
        coro = bound(params, results)
        try:
            coro.send(None)
        except StopIteration as done:
            if done.value is not None:
                fill_struct(results, done.value)
            if observe is not None:
                observe(method.name, time.perf_counter() - started, None)
            return self._results_frame(qid, method, payload)
        except Exception as e:  # noqa: BLE001 -- becomes a typed Return
            if observe is not None:
                observe(method.name, time.perf_counter() - started, e)
            self._log_call_error(qid, method, e)
            return frames.exception_frame(qid, *errors.to_wire(e))
        coro.close()
        error = RuntimeError(f"inline method {method.name} tried to block")
        self._log_call_error(qid, method, error)
        return frames.exception_frame(qid, *errors.to_wire(error))

    async def _serve_call(self, qid, answer, bound, method, params) -> None:
        payload, results = self._result_payload(method)
        error = None
        started = time.perf_counter() if self._observe is not None else 0.0
        with trio.CancelScope() as scope:
            answer.scope = scope
            if answer.finished:
                scope.cancel()
            try:
                value = await bound(params, results)
                if value is not None:
                    fill_struct(results, value)
            except Exception as e:  # noqa: BLE001 -- every error becomes a typed Return
                error = e
        if self._observe is not None:
            self._observe(method.name, time.perf_counter() - started,
                          "Cancelled" if scope.cancelled_caught else error)
        self._running_calls -= 1
        self._inflight_bytes -= answer.params_bytes
        self._bytes_freed.set()
        self._answers.pop(qid, None)
        if scope.cancelled_caught:
            frame = frames.canceled_frame(qid)
        elif error is not None:
            self._log_call_error(qid, method, error)
            frame = frames.exception_frame(qid, *errors.to_wire(error))
        else:
            frame = self._results_frame(qid, method, payload)
        try:
            await self._send(frame)
        except ConnectionLost:
            pass

    def _log_call_error(self, qid, method, error) -> None:
        fields = dict(conn=self.id, peer=self.peer, qid=qid, method=method.name, error=repr(error))
        if isinstance(error, errors.RemoteError):
            log.debug(kv("rpc.call_failed", **fields))
        else:
            log.warning(kv("rpc.call_raised", **fields), exc_info=error)

    _HANDLERS = {
        "call": _on_call,
        "return": _on_return,
        "finish": _on_finish,
        "bootstrap": _on_bootstrap,
        "release": _on_release,
        "abort": _on_abort,
        "unimplemented": _on_unimplemented,
    }


def _first_line(e: Exception) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text[:300]
