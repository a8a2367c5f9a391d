"""The blocking client: calls, multi calls, subscriptions."""

from __future__ import annotations

import concurrent.futures
import queue
import threading
from dataclasses import dataclass
from typing import (TYPE_CHECKING, Any, Callable, Generic, Iterable, Iterator, List, Mapping,
                    Optional, Sequence, Tuple, TypeVar, Union, cast)

from . import _core
from ._errors import Canceled, DeadlineExceeded, InvalidArgument, PsrpcError, Status, from_wire
from ._intercept import ClientCall, check_interceptors, start_call
from ._method import Method, ServiceLike, as_service, metadata_items, resolve, topic_list

if TYPE_CHECKING:
    from ._stream import Stream

__all__ = ["Client", "Claim", "SelectionOptions", "MultiResult", "MultiCall", "Subscription",
           "CallFuture"]

T = TypeVar("T")
R = TypeVar("R")
Topics = Union[None, str, Sequence[str]]

KIND_MESSAGE = 0
KIND_READY = 2
KIND_RELEASED = 3


def _ms(seconds: Optional[float], what: str = "timeout") -> int:
    if seconds is None:
        return 0
    if seconds < 0:
        raise ValueError(f"{what} must not be negative")
    ms = int(seconds * 1000)
    return ms if ms > 0 or seconds == 0 else 1


@dataclass(frozen=True)
class Claim:
    """A claim seen during server selection."""

    server_id: str
    affinity: float


SelectFunc = Callable[[List[Claim]], Optional[str]]


@dataclass(frozen=True)
class SelectionOptions:
    """Server selection (livekit/psrpc's SelectionOpts); passing them replaces
    every default, as in Go. Durations in seconds (0: none).

    ``select(claims) -> server_id`` (or None: fail with unavailable) replaces
    the built-in choice; it runs on the bus's loop thread and must not block.
    """

    minimum_affinity: float = 0.0
    maximum_affinity: float = 0.0
    accept_first_available: bool = False
    affinity_timeout: float = 0.0
    short_circuit_timeout: float = 0.0
    select: Optional[SelectFunc] = None

    def _tuple(self) -> Tuple[Any, ...]:
        flags = _core.PSRPC_SELECT_ACCEPT_FIRST_AVAILABLE if self.accept_first_available else 0
        return (flags, float(self.minimum_affinity), float(self.maximum_affinity),
                _ms(self.affinity_timeout, "affinity_timeout"),
                _ms(self.short_circuit_timeout, "short_circuit_timeout"),
                _select_adapter(self.select) if self.select is not None else None)


def _select_adapter(fn: SelectFunc) -> Callable[[Any, Tuple[Tuple[str, float], ...]], None]:
    def adapter(selection: Any, claims: Tuple[Tuple[str, float], ...]) -> None:
        try:
            chosen = fn([Claim(sid, aff) for sid, aff in claims])
        except PsrpcError as e:
            status = e.status if -100 < e.status < 0 else Status.UNKNOWN
            selection.fail(status, e.message)
            return
        except Exception as e:
            selection.fail(Status.UNKNOWN, f"select: {type(e).__name__}: {e}")
            raise
        if chosen is None:
            selection.fail(Status.UNAVAILABLE, "no server selected")
        else:
            selection.choose(str(chosen))

    return adapter


class MultiResult(Tuple[Optional[R], Optional[PsrpcError], Optional[str]], Generic[R]):
    """One answer of a multi call: ``(response, error, server_id)``, a
    response or an error, and the answering server. ``result()`` is the
    response, or raises the error."""

    __slots__ = ()

    def __new__(cls, response: Optional[R], error: Optional[PsrpcError],
                server_id: Optional[str]) -> "MultiResult[R]":
        return tuple.__new__(cls, (response, error, server_id))

    @property
    def response(self) -> Optional[R]:
        return self[0]

    @property
    def error(self) -> Optional[PsrpcError]:
        return self[1]

    @property
    def server_id(self) -> Optional[str]:
        return self[2]

    def result(self) -> R:
        """The response; raises the error of a failed answer."""
        if self[1] is not None:
            raise self[1]
        return self[0]  # type: ignore[return-value]

    def __repr__(self) -> str:
        return (f"MultiResult(response={self[0]!r}, error={self[1]!r}, "
                f"server_id={self[2]!r})")


def call_options(timeout: Optional[float], topics: Topics, metadata: Optional[Mapping[str, str]],
                 selection: Optional[SelectionOptions], wait_for_ready: bool,
                 deadline: Any = None) -> Optional[Tuple[Any, ...]]:
    t = topic_list(topics)
    md = metadata_items(metadata)
    if deadline is not None and not isinstance(deadline, (int, float)):
        deadline = deadline.deadline  # a handler's Context: inherit its deadline
    if (timeout is None and t is None and md is None and selection is None and not wait_for_ready
            and deadline is None):
        return None
    if timeout is not None and timeout <= 0:
        raise ValueError("timeout must be positive")
    flags = _core.PSRPC_CALL_WAIT_FOR_READY if wait_for_ready else 0
    deadline_ns = max(1, int(deadline * 1e9)) if deadline is not None else 0
    return (_ms(timeout), flags, t, md, selection._tuple() if selection is not None else None,
            deadline_ns)


_USE = {"multi": "multi_call", "stream": "open_stream", "subscription": "subscribe",
        "unary": "call"}


def method_kind(m: Method) -> str:
    if m.stream:
        return "stream"
    if m.subscription:
        return "subscription"
    return "multi" if m.multi else "unary"


def require_kind(m: Method, want: str) -> None:
    """InvalidArgument naming the Python method to use when m is not of the
    kind the operation needs."""
    have = method_kind(m)
    if have != want:
        raise InvalidArgument(f"{m.name} is a {have} method, not a {want} method: "
                              f"use {_USE[have]}()")


def connect_wait(client: "Client", timeout: Optional[float]) -> Optional[float]:
    """Before a subscription on a bus whose first connection attempt has not
    ended yet: waits for its outcome (so that an unreachable broker fails the
    subscription with the connection error at once); returns the timeout left
    (None: the client's default, nothing waited). Calls and streams do not
    need it: the core fails those waiting for the bus as soon as an attempt
    fails, and keeps wait-for-ready ones waiting."""
    bus = client._bus
    if bus._watch.settled.is_set() or _core.on_loop_thread():
        return timeout
    eff = timeout if timeout is not None else client._timeout
    waited = bus._wait_connect(eff)
    if not bus._watch.settled.is_set():
        raise DeadlineExceeded(f"bus {bus.url} not connected within {eff:g} s")
    if timeout is None and waited < 0.001:
        return None
    return cast("Optional[float]", max(eff - waited, 0.001))


class _Handle:
    """A C handle freed when the Python object goes (closing is separate, so
    concurrent users never see freed memory)."""

    _ptr: Any = None
    _closed: bool = True
    _free: Callable[[Any], None]

    def _bus_closed(self) -> None:
        self._closed = True

    def __del__(self) -> None:
        ptr = self._ptr
        self._ptr = None
        if ptr is not None:
            try:
                type(self)._free(ptr)
            except Exception:
                pass


class Client(_Handle):
    """A client of a service on a bus.

    ``service`` is a protobuf service descriptor
    (``my_pb2.DESCRIPTOR.services_by_name["MyService"]``), a ``psrpc.Service``,
    or a plain service name (then methods are plain queue methods carrying
    bytes unless given as ``psrpc.Method`` objects). ``timeout`` is the default
    request timeout in seconds (3 s). ``interceptors``: ``psrpc.ClientInterceptor``
    objects run around every call, in order (``add_interceptor`` adds more).
    ``retry``: a ``psrpc.RetryOptions`` (livekit/psrpc's WithRPCRetries);
    ``metrics``: a ``psrpc.Metrics`` counting this client's calls.
    """

    _free = staticmethod(_core.psrpc_client_free)

    def __init__(self, bus: Any, service: ServiceLike, *, client_id: Optional[str] = None,
                 timeout: Optional[float] = None, selection_timeout: Optional[float] = None,
                 methods: Iterable[Method] = (), interceptors: Iterable[Any] = (),
                 retry: Any = None, metrics: Any = None) -> None:
        self._service, self._strict = as_service(service, methods)
        self._interceptors: Tuple[Any, ...] = check_interceptors(interceptors, "client")
        opts = None
        if client_id is not None or timeout is not None or selection_timeout is not None:
            opts = (_ms(timeout), _ms(selection_timeout, "selection_timeout"), client_id)
        self._ptr = bus._with(_core.psrpc_client_create, self._service.name, opts)
        self._timeout = 3.0 if timeout is None else timeout  # the library's default
        self._closed = False
        self._bus = bus
        bus._adopt(self)
        self.id: str = _core.psrpc_client_id(self._ptr)
        if retry is not None:
            self.set_retry(retry)
        if metrics is not None:
            metrics.attach(self)

    @property
    def service(self) -> Any:
        return self._service

    def method(self, name: Union[str, Method]) -> Method:
        return resolve(self._service, self._strict, name)

    def _check(self) -> Any:
        if self._closed:
            raise Canceled("client is closed")
        return self._ptr

    def set_retry(self, retry: Any) -> None:
        """Sets (a ``psrpc.RetryOptions``) or clears (None) the retry policy of
        the calls made from now on."""
        if retry is None:
            _core.client_clear_retries(self._check())
        else:
            retry._apply(self._check())

    def add_interceptor(self, interceptor: Any) -> None:
        """Appends a ``psrpc.ClientInterceptor`` (calls started from now on)."""
        self._interceptors = self._interceptors + check_interceptors([interceptor], "client")

    @property
    def interceptors(self) -> Tuple[Any, ...]:
        return self._interceptors

    # ---- unary ----
    def call(self, method: Union[str, Method], request: Any = b"", *,
             timeout: Optional[float] = None, topics: Topics = None,
             metadata: Optional[Mapping[str, str]] = None,
             selection: Optional[SelectionOptions] = None,
             wait_for_ready: bool = False, deadline: Any = None) -> Any:
        """Sends a unary request and waits for the response (the GIL is
        released while waiting; Ctrl-C cancels the request).

        ``timeout`` (seconds) defaults to the client's. ``deadline`` is an
        absolute Unix time (seconds) the call never outlives, or a handler's
        ``Context`` so a nested call inherits its caller's deadline."""
        m = self.method(method)
        require_kind(m, "unary")
        data = m.encode_request(request)
        ic, metadata = start_call(self, m, "unary", request, metadata, topics, timeout, deadline)
        sid = None
        try:
            opts = call_options(timeout, topics, metadata, selection, wait_for_ready, deadline)
            resp, err, sid = _core.call_blocking(self._check(), m._c, data, opts)
            if err is not None:
                raise from_wire(err, sid)
            result = m.decode_response(resp)
        except BaseException as e:
            if ic is not None:
                ic.finish(e, sid)
            raise
        if ic is not None:
            ic.finish(None, sid)
        return result

    def call_future(self, method: Union[str, Method], request: Any = b"", *,
                    timeout: Optional[float] = None, topics: Topics = None,
                    metadata: Optional[Mapping[str, str]] = None,
                    selection: Optional[SelectionOptions] = None,
                    wait_for_ready: bool = False, deadline: Any = None) -> "CallFuture":
        """Sends a unary request; returns a ``concurrent.futures.Future`` whose
        ``cancel()`` cancels the request."""
        m = self.method(method)
        require_kind(m, "unary")
        data = m.encode_request(request)
        ic, metadata = start_call(self, m, "unary", request, metadata, topics, timeout, deadline)
        try:
            opts = call_options(timeout, topics, metadata, selection, wait_for_ready, deadline)
        except BaseException as e:
            if ic is not None:
                ic.finish(e)
            raise
        fut = CallFuture()
        fut.set_running_or_notify_cancel()

        def done(call_id: int, resp: Optional[bytes], err: Any, server_id: Optional[str],
                 _keep: Any = opts) -> None:
            fut.server_id = server_id
            if err is not None:
                exc = from_wire(err, server_id)
                if ic is not None:
                    ic.finish(exc, server_id)
                fut.set_exception(exc)
                return
            try:
                result = m.decode_response(resp)  # type: ignore[arg-type]
            except PsrpcError as e:
                if ic is not None:
                    ic.finish(e, server_id)
                fut.set_exception(e)
                return
            if ic is not None:
                ic.finish(None, server_id)
            fut.set_result(result)

        fut._client = self
        try:
            fut._call_id = _core.psrpc_client_call(self._check(), m._c, data, opts, done)
        except BaseException as e:
            if ic is not None:
                ic.finish(e)
            raise
        return fut

    def cancel(self, call_id: int) -> None:
        """Cancels a call by id (it completes with ``Canceled``)."""
        if self._ptr is not None:
            _core.psrpc_client_cancel(self._ptr, call_id)

    # ---- multi ----
    def multi_call(self, method: Union[str, Method], request: Any = b"", *,
                   timeout: Optional[float] = None, topics: Topics = None,
                   metadata: Optional[Mapping[str, str]] = None,
                   selection: Optional[SelectionOptions] = None,
                   wait_for_ready: bool = False, deadline: Any = None) -> "MultiCall[Any]":
        """Sends a multi request: iterate over the result for every server's
        answer (``MultiResult``) as it arrives, until the timeout ends it."""
        m = self.method(method)
        require_kind(m, "multi")
        data = m.encode_request(request)
        ic, metadata = start_call(self, m, "multi", request, metadata, topics, timeout, deadline)
        try:
            opts = call_options(timeout, topics, metadata, selection, wait_for_ready, deadline)
            q: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
            on_event = _multi_sink(q.put, ic, opts)
            call_id = _core.psrpc_client_call_multi(self._check(), m._c, data, opts, on_event)
        except BaseException as e:
            if ic is not None:
                ic.finish(e)
            raise
        return MultiCall(self, m, call_id, q)

    # ---- subscriptions ----
    def subscribe(self, method: Union[str, Method], topics: Topics = None, *,
                  timeout: float = 5.0, max_queue: int = 10000) -> "Subscription[Any]":
        """Subscribes to a subscription method; iterate over the result for
        messages. Waits (up to ``timeout``) until the broker confirmed the
        subscription. Messages beyond ``max_queue`` unread ones are dropped
        (counted in ``Subscription.dropped``)."""
        m = self.method(method)
        require_kind(m, "subscription")
        connect_wait(self, timeout)
        return Subscription(self, m, topic_list(topics), timeout, max_queue)

    # ---- streams ----
    def open_stream(self, method: Union[str, Method], *, timeout: Optional[float] = None,
                    topics: Topics = None, metadata: Optional[Mapping[str, str]] = None,
                    selection: Optional[SelectionOptions] = None, wait_for_ready: bool = False,
                    max_queue: int = 100) -> "Stream[Any, Any]":
        """Opens a bidirectional stream to one server of a stream method and
        waits until a server accepted it. ``timeout`` is also the stream's
        per-message timeout. Returns a ``psrpc.Stream``."""
        from ._stream import open_stream

        return open_stream(self, self.method(method), timeout=timeout, topics=topics,
                           metadata=metadata, selection=selection,
                           wait_for_ready=wait_for_ready, max_queue=max_queue)

    def close(self) -> None:
        """Closes the client (idempotent): calls in flight complete with
        ``Canceled``, its subscriptions end."""
        if self._closed:
            return
        self._closed = True
        if self._ptr is not None:
            try:
                _core.psrpc_client_close(self._ptr, None)
            except PsrpcError:
                pass

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self._service.name!r}, id={getattr(self, 'id', None)!r})"


def _multi_sink(put: Callable[[Any], Any], ic: Optional[ClientCall],
                opts: Any) -> Callable[..., None]:
    """The callable a C multi call holds: puts (final, resp, err, server_id)
    events; with interceptors, counts the results and finishes the call on
    the final event (on the loop thread)."""
    if ic is None:
        def on_event(final: bool, call_id: int, resp: Optional[bytes], err: Any,
                     server_id: Optional[str], _keep: Any = opts) -> None:
            put((final, resp, err, server_id))

        return on_event
    counts = [0, 0]

    def on_event_ic(final: bool, call_id: int, resp: Optional[bytes], err: Any,
                    server_id: Optional[str], _keep: Any = opts) -> None:
        if final:
            ic.finish(from_wire(err) if err is not None else None, None, counts[0], counts[1])
        else:
            counts[0 if err is None else 1] += 1
        put((final, resp, err, server_id))

    return on_event_ic


class CallFuture(concurrent.futures.Future):  # type: ignore[type-arg]
    """A unary call's future; ``cancel()`` cancels the request, which then
    fails with ``psrpc.Canceled``."""

    _client: Optional[Client] = None
    _call_id: int = 0
    server_id: Optional[str] = None

    def cancel(self) -> bool:
        if self.done():
            return False
        c = self._client
        if c is not None and c._ptr is not None:
            _core.psrpc_client_cancel(c._ptr, self._call_id)
        return True


class MultiCall(Iterator[MultiResult[R]], Generic[R]):
    """The answers of a multi call, as they arrive. ``cancel()`` (or leaving a
    ``with`` block, or dropping the object) stops it early."""

    def __init__(self, client: Client, method: Method, call_id: int,
                 q: "queue.SimpleQueue[Any]") -> None:
        self._client = client
        self._method = method
        self.call_id = call_id
        self._q = q
        self._done = False
        self._canceled = False

    def __iter__(self) -> "MultiCall[R]":
        return self

    def __next__(self) -> MultiResult[R]:
        if self._done:
            raise StopIteration
        final, resp, err, server_id = self._q.get()
        if final:
            self._done = True
            if err is not None and not self._canceled:
                raise from_wire(err)
            raise StopIteration
        if err is not None:
            return MultiResult(None, from_wire(err, server_id), server_id)
        try:
            return MultiResult(self._method.decode_response(resp), None, server_id)
        except PsrpcError as e:
            return MultiResult(None, e, server_id)

    def results(self) -> List[MultiResult[R]]:
        """Every answer, once the call ended."""
        return list(self)

    def cancel(self) -> None:
        if not self._done and not self._canceled:
            self._canceled = True
            self._client.cancel(self.call_id)

    def __enter__(self) -> "MultiCall[R]":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.cancel()

    def __del__(self) -> None:
        try:
            self.cancel()
        except Exception:
            pass


class _End:
    __slots__ = ()


_END = _End()


class _SubSink:
    """The callable the C subscription holds: feeds a queue, never the
    Subscription itself (so that can be garbage collected)."""

    __slots__ = ("q", "max", "dropped", "ready", "error")

    def __init__(self, max_queue: int) -> None:
        self.q: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        self.max = max_queue
        self.dropped = 0
        self.ready = threading.Event()
        self.error: Optional[PsrpcError] = None

    def __call__(self, kind: int, arg: Any) -> None:
        if kind == KIND_MESSAGE:
            if self.max and self.q.qsize() >= self.max:
                self.dropped += 1
            else:
                self.q.put(arg)
        elif kind == KIND_READY:
            if arg is not None:
                self.error = from_wire(arg)
            self.ready.set()
        elif kind == KIND_RELEASED:
            self.ready.set()
            self.q.put(_END)


class Subscription(_Handle, Generic[R]):
    """Messages of a subscription method, as an iterator. ``close()`` ends it."""

    _free = staticmethod(_core.psrpc_sub_free)

    def __init__(self, client: Client, method: Method, topics: Optional[Tuple[str, ...]],
                 timeout: float, max_queue: int) -> None:
        self._client = client
        self._method = method
        self._sink = _SubSink(max_queue)
        self._ptr = _core.psrpc_client_subscribe(client._check(), method._c, topics, self._sink)
        self._closed = False
        self._ended = False
        if not _core.on_loop_thread():
            if not self._sink.ready.wait(timeout):
                self.close()
                raise client._bus._not_confirmed(f"subscription to {method.name}")
            if self._sink.error is not None:
                self.close()
                raise self._sink.error

    @property
    def dropped(self) -> int:
        """Messages dropped because ``max_queue`` unread ones were waiting."""
        return self._sink.dropped

    def get(self, timeout: Optional[float] = None) -> R:
        """The next message; ``queue.Empty`` after ``timeout`` seconds,
        ``StopIteration`` once the subscription ended."""
        if self._ended:
            raise StopIteration
        item = self._sink.q.get(timeout=timeout)
        if item is _END:
            self._ended = True
            raise StopIteration
        msg: R = self._method.decode_response(item)
        return msg

    def __iter__(self) -> Iterator[R]:
        while True:
            try:
                yield self.get()
            except StopIteration:
                return

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._ptr is not None:
            try:
                _core.psrpc_sub_close(self._ptr, None)
            except PsrpcError:
                pass

    def __enter__(self) -> "Subscription[R]":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
