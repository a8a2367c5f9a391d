"""Bidirectional streams, blocking API."""

from __future__ import annotations

import queue
import threading
from typing import (Any, Callable, Generic, Iterator, Mapping, Optional, Tuple, TypeVar, Union,
                    cast)

from . import _core
from ._client import (KIND_MESSAGE, KIND_READY, KIND_RELEASED, _END, Topics, _ms, call_options,
                      require_kind)
from ._errors import Canceled, PsrpcError, from_wire, to_failure
from ._intercept import run_after_handle, run_before_handle, start_call
from ._method import Method, topic_list

__all__ = ["Stream", "open_stream", "register_stream"]

KIND_OPEN = 4
KIND_CLOSE = 5


def is_clean_close(err: Optional[PsrpcError]) -> bool:
    """A close without an error: the peer's (or our) ``close()`` reads as
    canceled "stream closed"."""
    return err is None or (err.code == "canceled" and err.message == "stream closed")


def close_args(error: Optional[BaseException]) -> Tuple[Optional[str], Optional[str]]:
    """(code, message) for psrpc_stream_close_code: None for a clean close;
    an error's code string travels unchanged (custom codes included)."""
    if error is None:
        return None, None
    code, message, _details = to_failure(error)
    return (code or "unknown"), message


class _StreamSink:
    """The callable the C stream holds: feeds a queue; refuses messages (not
    acknowledged: the peer's send times out) while ``max_queue`` wait."""

    __slots__ = ("q", "max", "opened", "open_error", "cause", "closed", "lock", "ic")

    def __init__(self, max_queue: int, ic: Any = None) -> None:
        self.q: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        self.max = max_queue
        self.opened = threading.Event()
        self.open_error: Optional[PsrpcError] = None
        self.cause: Optional[PsrpcError] = None
        self.closed = threading.Event()
        self.ic = ic  # client interceptors' call: finished with the open's outcome

    def __call__(self, kind: int, arg: Any) -> Optional[bool]:
        if kind == KIND_MESSAGE:
            if self.max and self.q.qsize() >= self.max:
                return True
            self.q.put(arg)
        elif kind == KIND_OPEN:
            if arg is not None:
                self.open_error = from_wire(arg)
            if self.ic is not None:
                self.ic.finish(self.open_error)
            self.opened.set()
        elif kind == KIND_CLOSE:
            self.cause = from_wire(arg) if arg is not None else None
            if self.ic is not None:
                self.ic.finish(self.cause or Canceled("stream closed"))
            self.opened.set()
            self.closed.set()
            self.q.put(_END)
        elif kind == KIND_RELEASED:
            if self.ic is not None:
                self.ic.finish(Canceled("stream closed"))
            self.opened.set()
            if not self.closed.is_set():
                self.closed.set()
                self.q.put(_END)
        return None


S = TypeVar("S")
R = TypeVar("R")


class Stream(Generic[S, R]):
    """One side of a bidirectional stream: ``send()`` waits until the peer
    acknowledged the message; iterate (or ``recv()``) to receive. Iteration
    ends when the stream closes cleanly and raises the cause otherwise.
    ``close()`` (or the end of a ``with`` block) closes it.

    Typed as ``Stream[S, R]``: it sends ``S`` messages and receives ``R``
    ones (a client's stream ``Stream[Request, Response]``, a stream
    handler's ``Stream[Response, Request]``)."""

    def __init__(self, core: Any, method: Method, sink: _StreamSink, server_side: bool) -> None:
        self._core = core
        self._method = method
        self._sink = sink
        self._server_side = server_side
        self._ended = False
        if server_side:
            self._encode = method.encode_response
            self._decode = method.decode_request
        else:
            self._encode = method.encode_request
            self._decode = method.decode_response

    @property
    def id(self) -> str:
        return cast("str", self._core.id)

    @property
    def node_id(self) -> str:
        """The opener's client id (server side), our client id (client side)."""
        return cast("str", self._core.node_id)

    @property
    def method(self) -> Method:
        return self._method

    @property
    def metadata(self) -> Mapping[str, str]:
        """The opener's metadata."""
        return cast("Mapping[str, str]", self._core.metadata)

    @property
    def deadline(self) -> Optional[float]:
        """Server side: Unix time (seconds) of the deadline the open request
        carried (pass ``deadline=stream`` to nested calls; the stream itself
        lives on past it, as in Go); None on the client side."""
        return _stream_deadline(self._core)

    @property
    def closed(self) -> bool:
        return self._sink.closed.is_set()

    @property
    def cause(self) -> Optional[PsrpcError]:
        """Why the stream closed, also a clean close (canceled "stream
        closed"); None while open."""
        return self._sink.cause

    @property
    def error(self) -> Optional[PsrpcError]:
        """Why the stream closed (None while open or after a clean close)."""
        c = self._sink.cause
        return None if is_clean_close(c) else c

    def send(self, message: S, *, timeout: Optional[float] = None) -> None:
        """Sends and waits for the peer's acknowledgement (``DeadlineExceeded``
        after ``timeout``, default the stream's timeout)."""
        err = self._core.send_blocking(bytes(self._encode(message)), _ms(timeout))
        if err is not None:
            raise from_wire(err)

    def recv(self, timeout: Optional[float] = None) -> R:
        """The next message. ``queue.Empty`` after ``timeout``; once the
        stream closed: the cause (``Canceled`` for a clean close)."""
        if not self._ended:
            item = self._sink.q.get(timeout=timeout)
            if item is not _END:
                msg: R = self._decode(item)
                return msg
            self._ended = True
        raise self._sink.cause or Canceled("stream closed")

    def __iter__(self) -> Iterator[R]:
        while True:
            try:
                yield self.recv()
            except PsrpcError as e:
                if self._ended and is_clean_close(e):
                    return
                raise

    def close(self, error: Optional[BaseException] = None) -> None:
        """Closes the stream, cleanly or with an error (its psrpc code
        travels; other exceptions as unknown). Idempotent."""
        code, message = close_args(error)
        try:
            self._core.close_code(code, message)
        except PsrpcError:
            pass

    def wait_closed(self, timeout: Optional[float] = None) -> bool:
        return self._sink.closed.wait(timeout)

    def __enter__(self) -> "Stream[S, R]":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close(exc if isinstance(exc, Exception) else None)

    def __repr__(self) -> str:
        return f"Stream({self._method.name!r}, id={self.id!r}{', closed' if self.closed else ''})"


def _stream_deadline(core: Any) -> Optional[float]:
    ns = getattr(core, "expiry_ns", 0)  # server streams: the open request's expiry
    return ns / 1e9 if ns else None


def open_stream(client: Any, method: Method, *, timeout: Optional[float], topics: Topics,
                metadata: Optional[Mapping[str, str]], selection: Any, wait_for_ready: bool,
                max_queue: int) -> "Stream[Any, Any]":
    require_kind(method, "stream")
    ic, metadata = start_call(client, method, "stream", None, metadata, topics, timeout, None)
    try:
        opts = call_options(timeout, topics, metadata, selection, wait_for_ready)
        sink = _StreamSink(max_queue, ic)
        core = _core.psrpc_client_open_stream(client._check(), method._c, opts, sink)
    except BaseException as e:
        if ic is not None:
            ic.finish(e)
        raise
    stream: Stream[Any, Any] = Stream(core, method, sink, server_side=False)
    if not _core.on_loop_thread():
        sink.opened.wait()  # the library always reports the open's outcome
        if sink.open_error is not None:
            raise sink.open_error
    return stream


class _StreamRegistration:
    def __init__(self, method: Method, handler: Callable[["Stream[Any, Any]"], Any],
                 affinity: Optional[Callable[..., Any]], topics: Optional[Tuple[str, ...]],
                 server_id: str, submit: Callable[..., Any], max_queue: int) -> None:
        from ._server import _Registration

        self.method = method
        self.handler = handler
        self.affinity = affinity
        self.topics = topics
        self.server_id = server_id
        self.submit = submit
        self.max_queue = max_queue
        self.ready = threading.Event()
        self.released = threading.Event()
        self.error: Optional[PsrpcError] = None
        self._claim = _Registration.claim
        self.chain: Any = [()]
        self.service = ""

    def __call__(self, kind: int, arg: Any) -> None:
        if kind == 0:
            sink = _StreamSink(self.max_queue)
            arg.set_callbacks(sink)
            stream: Stream[Any, Any] = Stream(arg, self.method, sink, server_side=True)
            try:
                self.submit(self.run, stream)
            except RuntimeError:
                stream.close(PsrpcError("server is shutting down", code="unavailable"))
        elif kind == 1:
            self._claim(self, arg)  # type: ignore[arg-type]
        elif kind == KIND_READY:
            if arg is not None:
                self.error = from_wire(arg)
            self.ready.set()
        elif kind == KIND_RELEASED:
            self.ready.set()
            self.released.set()

    def run(self, stream: "Stream[Any, Any]") -> None:
        from ._server import _tls, report

        _tls.in_handler = True
        try:
            self._run(stream, report)
        finally:
            _tls.in_handler = False

    def _run(self, stream: "Stream[Any, Any]", report: Callable[..., None]) -> None:
        chain = self.chain[0]
        call = None
        if chain:
            from ._server import server_call

            call = server_call(None, self.method, None, self.service, self.server_id, stream)
        error: Optional[BaseException] = None
        try:
            if call is not None:
                run_before_handle(chain, call)
            self.handler(stream)
        except BaseException as e:
            error = e
            report(e, self.method, self.server_id, "stream handler")
            stream.close(e)
            if not isinstance(e, Exception):
                raise
        else:
            stream.close()
        finally:
            if call is not None:
                run_after_handle(chain, call, error if error is not None else stream.error)


def register_stream(server: Any, method: Method, handler: Callable[["Stream[Any, Any]"], Any], *,
                    topics: Topics, affinity: Optional[Callable[..., Any]], wait: bool,
                    timeout: float, max_queue: int = 100) -> None:
    t = topic_list(topics)
    reg = server._attach(_StreamRegistration(method, handler, affinity, t, server.id,
                                             server._executor.submit, max_queue))
    _core.psrpc_server_register_stream(server._check(), method._c, t,
                                       (reg, affinity is not None))
    with server._lock:
        server._regs[(method.name, t or ())] = reg
    if wait:
        server._wait_reg(reg, timeout)
