"""The blocking server: handlers run on a thread pool."""

from __future__ import annotations

import concurrent.futures
import logging
import signal
import threading
import time
import weakref
from typing import (Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple,
                    TypeVar, Union, cast)

from . import _core
from ._client import KIND_READY, KIND_RELEASED, Topics, _Handle, _ms
from ._errors import (Canceled, DeadlineExceeded, InvalidArgument, MalformedResult, PsrpcError,
                      Status, from_wire, to_failure)
from ._intercept import ServerCall, check_interceptors, run_after_handle, run_before_handle
from ._method import Method, ServiceLike, as_service, resolve, topic_list

__all__ = ["Server", "Context"]

log = logging.getLogger("psrpc")

# Set on a thread while it runs a handler: a close from inside a handler
# must not wait for the handlers (itself among them) to finish.
_tls = threading.local()

KIND_REQUEST = 0
KIND_AFFINITY = 1

F = TypeVar("F", bound=Callable[..., Any])
# handler(request, context), or handler(stream) for stream methods
Handler = Callable[..., Any]
AffinityFunc = Callable[[Any, "Context"], Optional[float]]


class Context:
    """What a handler knows about the request it serves."""

    __slots__ = ("_req", "method", "server_id")

    def __init__(self, req: Any, method: Method, server_id: str) -> None:
        self._req = req
        self.method = method
        self.server_id = server_id

    @property
    def request_id(self) -> str:
        return cast("str", self._req.id)

    @property
    def client_id(self) -> str:
        """The caller's client id."""
        return cast("str", self._req.client_id)

    @property
    def topics(self) -> Tuple[str, ...]:
        return cast("Tuple[str, ...]", self._req.topics)

    @property
    def metadata(self) -> Mapping[str, str]:
        return cast("Mapping[str, str]", self._req.metadata)

    @property
    def sent_at(self) -> float:
        """Unix time (seconds) when the caller sent the request."""
        return cast("float", self._req.sent_at_ns / 1e9)

    @property
    def deadline(self) -> float:
        """Unix time (seconds) of the request's deadline."""
        return cast("float", self._req.expiry_ns / 1e9)

    def remaining(self) -> float:
        """Seconds left until the deadline (negative once past)."""
        return cast("float", (self._req.expiry_ns - time.time_ns()) / 1e9)

    def __repr__(self) -> str:
        return (f"Context(method={self.method.name!r}, client_id={self.client_id!r}, "
                f"topics={self.topics!r})")


def report(exc: BaseException, method: Method, server_id: str, what: str = "handler") -> None:
    """Logs a handler failure once, on the ``psrpc`` logger: an exception
    that is not a ``PsrpcError`` (a deliberate answer) at ERROR with its
    traceback; psrpc errors and cancellations at DEBUG."""
    if isinstance(exc, Exception) and not isinstance(exc, PsrpcError):
        log.error("psrpc: %s of %s (server %s) raised %s: %s", what, method.name, server_id,
                  type(exc).__name__, exc, exc_info=exc)
    else:
        log.debug("psrpc: %s of %s (server %s) answered %r", what, method.name, server_id, exc)


def answer(req: Any, method: Method, fn: Callable[[], Any], server_id: str = "") -> None:
    """Runs fn (which returns the response message) and answers req."""
    try:
        result = fn()
    except BaseException as e:  # noqa: B902 - every failure must answer the request
        report(e, method, server_id)
        fail(req, e)
        if not isinstance(e, Exception):
            raise
        return
    respond(req, method, result, server_id)


def answer_intercepted(req: Any, method: Method, handler: Callable[..., Any], ctx: "Context",
                       chain: Tuple[Any, ...], service: str, server_id: str) -> None:
    """answer() with the server interceptors around the handler."""
    call = server_call(req, method, ctx, service, server_id)
    error: Optional[BaseException] = None
    try:
        try:
            call.request = method.decode_request(req.payload)
            run_before_handle(chain, call)
            result = handler(call.request, ctx)
        except BaseException as e:  # noqa: B902 - every failure must answer the request
            error = e
            report(e, method, server_id)
            fail(req, e)
            if not isinstance(e, Exception):
                raise
            return
        error = respond(req, method, result, server_id)
    finally:
        run_after_handle(chain, call, error)


def server_call(req: Any, method: Method, ctx: Optional["Context"], service: str,
                server_id: str, stream: Any = None) -> ServerCall:
    from ._client import method_kind

    if stream is not None:
        return ServerCall(service, method, "stream", stream.node_id, server_id, stream.id, None,
                          stream.metadata, (), stream.deadline, None, stream)
    return ServerCall(service, method, method_kind(method), req.client_id, server_id, req.id,
                      None, req.metadata, req.topics, req.expiry_ns / 1e9 or None, ctx)


def respond(req: Any, method: Method, result: Any, server_id: str) -> Optional[PsrpcError]:
    """Answers req with a handler's result; a result that is not the
    method's response type fails the request (malformed_result) and is
    logged at ERROR. Returns the error answered, if any."""
    try:
        data = method.encode_response(result)
    except Exception as e:
        expected = (method.response_type.DESCRIPTOR.full_name
                    if method.response_type is not None else "bytes")
        log.error("psrpc: handler of %s (server %s) returned %s, not a %s: %s", method.name,
                  server_id, type(result).__name__, expected, e)
        err = e if isinstance(e, PsrpcError) else MalformedResult(
            f"handler of {method.name} returned {type(result).__name__}, not {expected}")
        fail(req, err)
        return err
    try:
        req.respond(data)
    except PsrpcError:
        pass  # server force-closed meanwhile: the answer is discarded
    return None


def fail(req: Any, exc: BaseException) -> None:
    code, message, details = to_failure(exc)
    try:
        req.fail_details(code, message, details)
    except PsrpcError:
        pass


class _Registration:
    """The callable a C registration holds (it never references the Server,
    so a dropped server can be collected and closes)."""

    def __init__(self, method: Method, handler: Handler, affinity: Optional[AffinityFunc],
                 topics: Optional[Tuple[str, ...]], server_id: str,
                 submit: Callable[..., Any]) -> None:
        self.method = method
        self.handler = handler
        self.affinity = affinity
        self.topics = topics
        self.server_id = server_id
        self.submit = submit
        self.ready = threading.Event()
        self.released = threading.Event()
        self.error: Optional[PsrpcError] = None
        # The server's interceptors (a one-element list shared with it) and name.
        self.chain: List[Tuple[Any, ...]] = [()]
        self.service = ""

    def __call__(self, kind: int, arg: Any) -> None:
        if kind == KIND_REQUEST:
            try:
                self.submit(self.run, arg)
            except RuntimeError:  # executor shut down
                arg.fail(Status.UNAVAILABLE, "server is shutting down")
        elif kind == KIND_AFFINITY:
            self.claim(arg)
        elif kind == KIND_READY:
            if arg is not None:
                self.error = from_wire(arg)
            self.ready.set()
        elif kind == KIND_RELEASED:
            self.ready.set()
            self.released.set()

    def run(self, req: Any) -> None:
        m = self.method
        ctx = Context(req, m, self.server_id)
        _tls.in_handler = True
        try:
            chain = self.chain[0]
            if chain:
                answer_intercepted(req, m, self.handler, ctx, chain, self.service,
                                   self.server_id)
            else:
                answer(req, m, lambda: self.handler(m.decode_request(req.payload), ctx),
                       self.server_id)
        finally:
            _tls.in_handler = False

    def claim(self, req: Any) -> None:
        # Runs on the loop thread: affinity functions must be quick.
        try:
            msg = self.method.decode_request(req.payload)
        except PsrpcError as e:
            # Undecodable: answered at once without a claim, as Go does.
            req.reject(e.code, e.message)
            return
        try:
            a = self.affinity(msg, Context(req, self.method, self.server_id))  # type: ignore[misc]
        except Exception:
            log.exception("psrpc affinity function raised; declining")
            a = None
        req.claim(-1.0 if a is None else float(a))


class Server(_Handle):
    """A server of a service on a bus; it serves until closed (or its bus
    closes), whether or not the program keeps a reference to it. Handlers ``handler(request, context)``
    return the response message (or raise: a ``psrpc.PsrpcError`` travels
    with its code and details, ``NotImplementedError`` as unimplemented, any
    other exception as unknown with its text). They run on a thread pool
    (``max_workers`` threads, or your ``executor``). ``interceptors``:
    ``psrpc.ServerInterceptor`` objects run around every handler, in order;
    ``metrics``: a ``psrpc.Metrics`` counting its handled requests.

    ``server.register("Method", handler)`` or, as a decorator,
    ``@server.handler("Method")``.
    """

    _free = staticmethod(_core.psrpc_server_free)

    def __init__(self, bus: Any, service: ServiceLike, *, server_id: Optional[str] = None,
                 skip_claim: bool = False, stream_timeout: Optional[float] = None,
                 executor: Optional[concurrent.futures.Executor] = None,
                 max_workers: Optional[int] = None, methods: Iterable[Method] = (),
                 interceptors: Iterable[Any] = (), metrics: Any = None) -> None:
        self._service, self._strict = as_service(service, methods)
        # One-element list shared with the registrations (which never hold the server).
        self._chain: List[Tuple[Any, ...]] = [check_interceptors(interceptors, "server")]
        opts = None
        if server_id is not None or skip_claim or stream_timeout is not None:
            opts = (_core.PSRPC_SERVER_SKIP_CLAIM if skip_claim else 0, _ms(stream_timeout),
                    server_id)
        self._own_executor = executor is None
        self._executor = executor or concurrent.futures.ThreadPoolExecutor(
            max_workers=max_workers, thread_name_prefix="psrpc-handler")
        self._ptr = bus._with(_core.psrpc_server_create, self._service.name, opts)
        self._closed = False
        self._bus = bus
        bus._adopt(self, keep=True)
        self.id: str = _core.psrpc_server_id(self._ptr)
        if metrics is not None:
            metrics.attach(self)
        self._regs: Dict[Tuple[str, Tuple[str, ...]], _Registration] = {}
        self._wake = threading.Event()  # set once closed: ends serve_forever
        # The event loop of a psrpc.aio.Server wrapping this one (its handlers
        # run there: a close on that loop's thread must not block it).
        self._aio_loop: Any = None
        self._lock = threading.Lock()
        weakref.finalize(self, _shutdown_executor, self._executor, self._own_executor)

    @property
    def service(self) -> Any:
        return self._service

    def method(self, name: Union[str, Method]) -> Method:
        return resolve(self._service, self._strict, name)

    def _check(self) -> Any:
        if self._closed:
            raise Canceled("server is closed")
        return self._ptr

    def add_interceptor(self, interceptor: Any) -> None:
        """Appends a ``psrpc.ServerInterceptor`` (requests handled from now on)."""
        self._chain[0] = self._chain[0] + check_interceptors([interceptor], "server")

    @property
    def interceptors(self) -> Tuple[Any, ...]:
        return self._chain[0]

    def _attach(self, reg: Any) -> Any:
        reg.chain = self._chain
        reg.service = self._service.name
        return reg

    def register(self, method: Union[str, Method], handler: Handler, *, topics: Topics = None,
                 affinity: Optional[AffinityFunc] = None, wait: bool = True,
                 timeout: float = 5.0) -> None:
        """Serves ``method`` (under ``topics`` for topic methods) with
        ``handler(request, context)``. ``affinity(request, context)`` answers
        claims of affinity methods (a float; None or negative declines); it
        runs on the bus's loop thread and must not block. Waits until the
        broker confirmed the registration unless ``wait=False``."""
        m = self.method(method)
        if m.stream:
            return self._register_stream(m, handler, topics=topics, affinity=affinity,
                                         wait=wait, timeout=timeout)
        t = topic_list(topics)
        reg = self._attach(_Registration(m, handler, affinity, t, self.id, self._executor.submit))
        _core.psrpc_server_register(self._check(), m._c, t, (reg, affinity is not None))
        with self._lock:
            self._regs[(m.name, t or ())] = reg
        if wait:
            self._wait_reg(reg, timeout)

    def _register_stream(self, m: Method, handler: Any, **kw: Any) -> None:
        from ._stream import register_stream

        register_stream(self, m, handler, **kw)

    def _wait_reg(self, reg: Any, timeout: float) -> None:
        if _core.on_loop_thread():
            return
        if not reg.ready.wait(timeout):
            raise self._bus._not_confirmed(f"registration of {reg.method.name}")
        if reg.error is not None:
            raise reg.error

    def handler(self, method: Union[str, Method], *, topics: Topics = None,
                affinity: Optional[AffinityFunc] = None) -> Callable[[F], F]:
        """Decorator form of ``register``."""

        def deco(fn: F) -> F:
            self.register(method, fn, topics=topics, affinity=affinity)
            return fn

        return deco

    def deregister(self, method: Union[str, Method], topics: Topics = None) -> None:
        m = self.method(method)
        t = topic_list(topics)
        _core.psrpc_server_deregister(self._check(), m.name, t)
        with self._lock:
            self._regs.pop((m.name, t or ()), None)

    def wait_ready(self, timeout: float = 5.0) -> None:
        """Blocks until every registration made so far is confirmed."""
        _core.psrpc_server_wait_ready(self._check(), int(timeout * 1000))

    def publish(self, method: Union[str, Method], message: Any, topics: Topics = None) -> None:
        """Publishes a message on a subscription method (fire and forget)."""
        m = self.method(method)
        _core.psrpc_server_publish(self._check(), m._c, topic_list(topics),
                                   m.encode_response(message))

    def close(self, *, force: bool = False, timeout: Optional[float] = None) -> None:
        """Stops serving. Unless ``force``, waits (up to ``timeout``) until
        every request handed to a handler was answered, and sends those
        answers (the library bounds the wait by the requests' deadlines).
        Idempotent; a forced close hurries an ongoing graceful one. Called
        from inside a handler (or on the event loop of a ``psrpc.aio``
        server), it starts the close without waiting."""
        first = not self._closed
        self._closed = True
        self._wake.set()
        ptr = self._ptr
        if ptr is not None:
            done = threading.Event()
            try:
                _core.psrpc_server_close(ptr, _core.PSRPC_CLOSE_FORCE if force else 0, done.set)
            except PsrpcError:
                done.set()
            if not (_core.on_loop_thread() or getattr(_tls, "in_handler", False)
                    or _on_loop(self._aio_loop)):
                done.wait(timeout)
        if first and self._own_executor:
            self._executor.shutdown(wait=False)
        self._bus._forget(self)

    def serve_forever(self, *, grace: Optional[float] = None,
                      signals: Sequence[int] = (signal.SIGINT, signal.SIGTERM),
                      on_start: Optional[Callable[[], object]] = None) -> None:
        """Serves until SIGINT or SIGTERM (or until the server or its bus is
        closed elsewhere), then closes gracefully: requests in flight are
        answered (waiting up to ``grace`` seconds, default: their deadlines)
        before it returns. The signal handlers are installed only while it
        runs and only on the main thread; elsewhere it just waits for the
        close, like grpcio's ``wait_for_termination``. ``on_start()`` runs
        once they are installed (print a readiness line there: a signal sent
        after it is handled gracefully)."""
        signaled: List[int] = []

        def on_signal(signum: int, frame: Any) -> None:
            signaled.append(signum)
            self._wake.set()

        previous: List[Tuple[int, Any]] = []
        if threading.current_thread() is threading.main_thread():
            for sig in signals:
                previous.append((sig, signal.signal(sig, on_signal)))
        try:
            if on_start is not None:
                on_start()
            while not self._wake.wait(0.25):
                pass
        finally:
            for sig, old in previous:
                signal.signal(sig, old)
        if signaled:
            log.info("psrpc: server %s got signal %d: closing gracefully", self.id, signaled[0])
        self.close(timeout=grace)

    def _bus_closed(self) -> None:
        self._closed = True
        self._wake.set()
        if self._own_executor:
            self._executor.shutdown(wait=False)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Server({self._service.name!r}, id={getattr(self, 'id', None)!r})"


def _on_loop(loop: Any) -> bool:
    """True on the thread running the asyncio event loop loop."""
    if loop is None:
        return False
    try:
        import asyncio

        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def _shutdown_executor(executor: concurrent.futures.Executor, own: bool) -> None:
    if own:
        executor.shutdown(wait=False)
