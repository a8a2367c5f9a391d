"""psrpc for asyncio: the same operations as coroutines and async iterators.

    import asyncio, psrpc, psrpc.aio

    async def main():
        async with psrpc.Bus() as bus:
            server = psrpc.aio.Server(bus, svc)

            @server.handler("Echo")
            async def echo(req, ctx):
                return EchoResponse(payload=req.payload)

            await server.wait_ready()
            client = psrpc.aio.Client(bus, svc)
            print(await client.call("Echo", EchoRequest(payload=b"hi")))

Library callbacks run on the bus's loop thread; they reach the event loop
through ``loop.call_soon_threadsafe`` (a closed loop is ignored). Cancelling
the task awaiting a call cancels the request. Create clients, servers,
subscriptions and streams inside a running event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import inspect
import logging
import signal
import threading
from typing import (Any, AsyncIterator, Awaitable, Callable, Dict, Generic, Iterable, List,
                    Mapping, Optional, Sequence, Set, Tuple, TypeVar, Union, cast)

from . import _client, _core, _server
from ._bus import Bus
from ._client import (KIND_MESSAGE, KIND_READY, KIND_RELEASED, MultiResult, SelectionOptions,
                      Topics, _ms, call_options, require_kind)
from ._errors import Canceled, DeadlineExceeded, PsrpcError, Status, from_wire, to_failure
from ._intercept import run_after_handle, run_before_handle, start_call
from ._method import Method, ServiceLike, topic_list
from ._server import Context
from ._stream import KIND_CLOSE, KIND_OPEN, _stream_deadline, close_args, is_clean_close

__all__ = ["Bus", "Client", "Server", "MultiCall", "Subscription", "Stream"]

log = logging.getLogger("psrpc")

_END = object()


def _post(loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any) -> bool:
    """Schedules fn on loop from any thread; False if the loop is closed."""
    try:
        loop.call_soon_threadsafe(fn, *args)
        return True
    except RuntimeError:
        return False


def _settle(fut: "asyncio.Future[Any]", value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


async def _connect_wait(client: _client.Client, timeout: Optional[float]) -> Optional[float]:
    """psrpc._client.connect_wait (for subscriptions) without blocking the
    event loop."""
    w = client._bus._watch
    if w.settled.is_set():
        return timeout
    loop = asyncio.get_running_loop()
    fut: "asyncio.Future[Any]" = loop.create_future()
    if not w.when_settled(lambda: _post(loop, _settle, fut, None)):
        return timeout
    eff = timeout if timeout is not None else client._timeout
    t0 = loop.time()
    try:
        await asyncio.wait_for(fut, eff)
    except asyncio.TimeoutError:
        raise DeadlineExceeded(f"bus {client._bus.url} not connected within {eff:g} s") from None
    waited = loop.time() - t0
    if timeout is None and waited < 0.001:
        return None
    return max(eff - waited, 0.001)


class Client:
    """An asyncio client (see ``psrpc.Client`` for the arguments)."""

    def __init__(self, bus: Bus, service: ServiceLike, **kwargs: Any) -> None:
        self._c = _client.Client(bus, service, **kwargs)
        self.id = self._c.id

    @property
    def service(self) -> Any:
        return self._c.service

    def method(self, name: Union[str, Method]) -> Method:
        return self._c.method(name)

    def add_interceptor(self, interceptor: Any) -> None:
        """See ``psrpc.Client.add_interceptor``."""
        self._c.add_interceptor(interceptor)

    async def call(self, method: Union[str, Method], request: Any = b"", *,
                   timeout: Optional[float] = None, topics: Topics = None,
                   metadata: Optional[Mapping[str, str]] = None,
                   selection: Optional[SelectionOptions] = None,
                   wait_for_ready: bool = False, deadline: Any = None) -> Any:
        """Sends a unary request and returns the response. Cancelling the
        awaiting task cancels the request. ``deadline``: see ``psrpc.Client.call``."""
        m = self._c.method(method)
        require_kind(m, "unary")
        data = m.encode_request(request)
        ic, metadata = start_call(self._c, m, "unary", request, metadata, topics, timeout,
                                  deadline)
        server_id = None
        try:
            opts = call_options(timeout, topics, metadata, selection, wait_for_ready, deadline)
            loop = asyncio.get_running_loop()
            fut: "asyncio.Future[Any]" = loop.create_future()

            def done(call_id: int, resp: Optional[bytes], err: Any, server_id: Optional[str],
                     _keep: Any = opts) -> None:
                _post(loop, _settle, fut, (resp, err, server_id))

            call_id = _core.psrpc_client_call(self._c._check(), m._c, data, opts, done)
            try:
                resp, err, server_id = await fut
            except asyncio.CancelledError:
                self._c.cancel(call_id)
                raise
            if err is not None:
                raise from_wire(err, server_id)
            result = m.decode_response(resp)
        except BaseException as e:
            if ic is not None:
                ic.finish(e, server_id)
            raise
        if ic is not None:
            ic.finish(None, server_id)
        return result

    def multi_call(self, method: Union[str, Method], request: Any = b"", *,
                   timeout: Optional[float] = None, topics: Topics = None,
                   metadata: Optional[Mapping[str, str]] = None,
                   selection: Optional[SelectionOptions] = None,
                   wait_for_ready: bool = False, deadline: Any = None) -> "MultiCall[Any]":
        """Sends a multi request: ``async for result in client.multi_call(...)``."""
        m = self._c.method(method)
        require_kind(m, "multi")
        data = m.encode_request(request)
        ic, metadata = start_call(self._c, m, "multi", request, metadata, topics, timeout,
                                  deadline)
        try:
            opts = call_options(timeout, topics, metadata, selection, wait_for_ready, deadline)
            loop = asyncio.get_running_loop()
            q: "asyncio.Queue[Any]" = asyncio.Queue()
            on_event = _client._multi_sink(lambda ev: _post(loop, q.put_nowait, ev), ic, opts)
            call_id = _core.psrpc_client_call_multi(self._c._check(), m._c, data, opts, on_event)
        except BaseException as e:
            if ic is not None:
                ic.finish(e)
            raise
        return MultiCall(self._c, m, call_id, q)

    async def subscribe(self, method: Union[str, Method], topics: Topics = None, *,
                        timeout: float = 5.0, max_queue: int = 10000) -> "Subscription[Any]":
        """Subscribes; ``async for message in subscription``."""
        m = self._c.method(method)
        require_kind(m, "subscription")
        await _connect_wait(self._c, timeout)
        sub: Subscription[Any] = Subscription(self._c, m, topic_list(topics), max_queue)
        try:
            await asyncio.wait_for(asyncio.shield(sub._ready), timeout)
        except asyncio.TimeoutError:
            sub.close()
            raise self._c._bus._not_confirmed(f"subscription to {m.name}") from None
        except BaseException:
            sub.close()
            raise
        return sub

    async def open_stream(self, method: Union[str, Method], *, timeout: Optional[float] = None,
                          topics: Topics = None, metadata: Optional[Mapping[str, str]] = None,
                          selection: Optional[SelectionOptions] = None,
                          wait_for_ready: bool = False,
                          max_queue: int = 100) -> "Stream[Any, Any]":
        """Opens a bidirectional stream and waits until a server accepted it."""
        m = self._c.method(method)
        require_kind(m, "stream")
        ic, metadata = start_call(self._c, m, "stream", None, metadata, topics, timeout, None)
        try:
            opts = call_options(timeout, topics, metadata, selection, wait_for_ready)
            sink = _StreamSink(asyncio.get_running_loop(), max_queue)
            core = _core.psrpc_client_open_stream(self._c._check(), m._c, opts, sink)
            stream: Stream[Any, Any] = Stream(core, m, sink, server_side=False)
            try:
                err = await asyncio.shield(sink.opened)
            except asyncio.CancelledError:
                stream.close(Canceled("request canceled"))
                raise
            if err is not None:
                raise err
        except BaseException as e:
            if ic is not None:
                ic.finish(e)
            raise
        if ic is not None:
            ic.finish(None)
        return stream

    def close(self) -> None:
        self._c.close()

    @property
    def closed(self) -> bool:
        return self._c.closed

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.close()


R = TypeVar("R")
S = TypeVar("S")


class MultiCall(AsyncIterator[MultiResult[R]], Generic[R]):
    """Answers of a multi call as an async iterator; ``cancel()`` stops it."""

    def __init__(self, client: _client.Client, method: Method, call_id: int,
                 q: "asyncio.Queue[Any]") -> None:
        self._client = client
        self._method = method
        self.call_id = call_id
        self._q = q
        self._done = False
        self._canceled = False

    def __aiter__(self) -> "MultiCall[R]":
        return self

    async def __anext__(self) -> MultiResult[R]:
        if self._done:
            raise StopAsyncIteration
        try:
            final, resp, err, server_id = await self._q.get()
        except asyncio.CancelledError:
            self.cancel()
            raise
        if final:
            self._done = True
            if err is not None and not self._canceled:
                raise from_wire(err)
            raise StopAsyncIteration
        if err is not None:
            return MultiResult(None, from_wire(err, server_id), server_id)
        try:
            return MultiResult(self._method.decode_response(resp), None, server_id)
        except PsrpcError as e:
            return MultiResult(None, e, server_id)

    async def results(self) -> List[MultiResult[R]]:
        return [r async for r in self]

    def cancel(self) -> None:
        if not self._done and not self._canceled:
            self._canceled = True
            self._client.cancel(self.call_id)

    async def aclose(self) -> None:
        self.cancel()

    async def __aenter__(self) -> "MultiCall[R]":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.cancel()

    def __del__(self) -> None:
        try:
            self.cancel()
        except Exception:
            pass


class _AsyncSubSink:
    __slots__ = ("loop", "q", "max", "pending", "dropped", "ready", "lock")

    def __init__(self, loop: asyncio.AbstractEventLoop, max_queue: int,
                 ready: "asyncio.Future[Any]") -> None:
        self.loop = loop
        self.q: "asyncio.Queue[Any]" = asyncio.Queue()
        self.max = max_queue
        self.pending = 0
        self.dropped = 0
        self.ready = ready
        self.lock = threading.Lock()

    def _set_ready(self, err: Any) -> None:
        if not self.ready.done():
            if err is None:
                self.ready.set_result(None)
            else:
                self.ready.set_exception(from_wire(err))

    def __call__(self, kind: int, arg: Any) -> None:
        if kind == KIND_MESSAGE:
            with self.lock:
                if self.max and self.pending >= self.max:
                    self.dropped += 1
                    return
                self.pending += 1
            _post(self.loop, self.q.put_nowait, arg)
        elif kind == KIND_READY:
            _post(self.loop, self._set_ready, arg)
        elif kind == KIND_RELEASED:
            _post(self.loop, self._set_ready, None)
            _post(self.loop, self.q.put_nowait, _END)


class Subscription(_client._Handle, Generic[R]):
    """Messages of a subscription as an async iterator; ``close()`` ends it."""

    _free = staticmethod(_core.psrpc_sub_free)

    def __init__(self, client: _client.Client, method: Method,
                 topics: Optional[Tuple[str, ...]], max_queue: int) -> None:
        loop = asyncio.get_running_loop()
        self._ready: "asyncio.Future[Any]" = loop.create_future()
        self._sink = _AsyncSubSink(loop, max_queue, self._ready)
        self._method = method
        self._client = client
        self._ptr = _core.psrpc_client_subscribe(client._check(), method._c, topics, self._sink)
        self._closed = False
        self._ended = False

    @property
    def dropped(self) -> int:
        return self._sink.dropped

    async def get(self) -> R:
        """The next message; ``StopAsyncIteration`` once ended."""
        if self._ended:
            raise StopAsyncIteration
        item = await self._sink.q.get()
        if item is _END:
            self._ended = True
            raise StopAsyncIteration
        with self._sink.lock:
            self._sink.pending -= 1
        msg: R = self._method.decode_response(item)
        return msg

    def __aiter__(self) -> "Subscription[R]":
        return self

    async def __anext__(self) -> R:
        return await self.get()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._ptr is not None:
            try:
                _core.psrpc_sub_close(self._ptr, None)
            except PsrpcError:
                pass

    async def __aenter__(self) -> "Subscription[R]":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.close()


class _StreamSink:
    __slots__ = ("loop", "q", "max", "pending", "opened", "cause", "closed", "lock")

    def __init__(self, loop: asyncio.AbstractEventLoop, max_queue: int) -> None:
        self.loop = loop
        self.q: "asyncio.Queue[Any]" = asyncio.Queue()
        self.max = max_queue
        self.pending = 0
        self.opened: "asyncio.Future[Any]" = loop.create_future()
        self.closed: "asyncio.Future[Any]" = loop.create_future()
        self.cause: Optional[PsrpcError] = None
        self.lock = threading.Lock()

    def _open(self, err: Optional[PsrpcError]) -> None:
        if not self.opened.done():
            self.opened.set_result(err)

    def _close(self, err: Optional[PsrpcError]) -> None:
        if not self.closed.done():
            self.cause = err
            self.closed.set_result(err)
            self.q.put_nowait(_END)
        self._open(err or Canceled("stream closed"))

    def __call__(self, kind: int, arg: Any) -> Optional[bool]:
        if kind == KIND_MESSAGE:
            with self.lock:
                if self.max and self.pending >= self.max:
                    return True  # not acknowledged: the peer's send times out
                self.pending += 1
            if not _post(self.loop, self.q.put_nowait, arg):
                return True
        elif kind == KIND_OPEN:
            _post(self.loop, self._open, from_wire(arg) if arg is not None else None)
        elif kind == KIND_CLOSE:
            _post(self.loop, self._close, from_wire(arg) if arg is not None else None)
        elif kind == KIND_RELEASED:
            _post(self.loop, self._close, None)
        return None


class Stream(Generic[S, R]):
    """One side of a bidirectional stream for asyncio: ``await send(msg)``,
    ``await recv()`` or ``async for msg in stream``, ``close()``. Typed as
    ``Stream[S, R]``: sends ``S``, receives ``R`` (see ``psrpc.Stream``)."""

    def __init__(self, core: Any, method: Method, sink: _StreamSink, server_side: bool) -> None:
        self._core = core
        self._method = method
        self._sink = sink
        self._ended = False
        if server_side:
            self._encode, self._decode = method.encode_response, method.decode_request
        else:
            self._encode, self._decode = method.encode_request, method.decode_response

    @property
    def id(self) -> str:
        return cast("str", self._core.id)

    @property
    def node_id(self) -> str:
        return cast("str", self._core.node_id)

    @property
    def method(self) -> Method:
        return self._method

    @property
    def metadata(self) -> Mapping[str, str]:
        return cast("Mapping[str, str]", self._core.metadata)

    @property
    def deadline(self) -> Optional[float]:
        """See ``psrpc.Stream.deadline``."""
        return _stream_deadline(self._core)

    @property
    def closed(self) -> bool:
        return self._sink.closed.done()

    @property
    def cause(self) -> Optional[PsrpcError]:
        """Why the stream closed, also a clean close (canceled "stream
        closed"); None while open."""
        return self._sink.cause

    @property
    def error(self) -> Optional[PsrpcError]:
        c = self._sink.cause
        return None if is_clean_close(c) else c

    async def send(self, message: S, *, timeout: Optional[float] = None) -> None:
        """Sends and waits for the peer's acknowledgement."""
        loop = asyncio.get_running_loop()
        fut: "asyncio.Future[Any]" = loop.create_future()

        def done(err: Any) -> None:
            _post(loop, _settle, fut, err)

        self._core.send(bytes(self._encode(message)), _ms(timeout), done)
        err = await fut
        if err is not None:
            raise from_wire(err)

    async def recv(self) -> R:
        """The next message; once closed, the cause (``Canceled`` when clean)."""
        if not self._ended:
            item = await self._sink.q.get()
            if item is not _END:
                with self._sink.lock:
                    self._sink.pending -= 1
                msg: R = self._decode(item)
                return msg
            self._ended = True
        raise self._sink.cause or Canceled("stream closed")

    def __aiter__(self) -> "Stream[S, R]":
        return self

    async def __anext__(self) -> R:
        try:
            return await self.recv()
        except PsrpcError as e:
            if self._ended and is_clean_close(e):
                raise StopAsyncIteration from None
            raise

    def close(self, error: Optional[BaseException] = None) -> None:
        code, message = close_args(error)
        try:
            self._core.close_code(code, message)
        except PsrpcError:
            pass

    async def wait_closed(self) -> Optional[PsrpcError]:
        return await asyncio.shield(self._sink.closed)

    async def __aenter__(self) -> "Stream[S, R]":
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close(exc if isinstance(exc, Exception) else None)


class _AsyncRegistration:
    """The callable a C registration holds (never the Server itself)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, method: Method, handler: Callable[..., Any],
                 affinity: Optional[Callable[..., Any]], server_id: str,
                 executor: Optional[concurrent.futures.Executor], tasks: Set["asyncio.Task[Any]"],
                 stream: bool, max_queue: int) -> None:
        self.loop = loop
        self.method = method
        self.handler = handler
        self.affinity = affinity
        self.server_id = server_id
        self.executor = executor
        self.tasks = tasks
        self.stream = stream
        self.max_queue = max_queue
        self.ready: "asyncio.Future[Any]" = loop.create_future()
        self.chain: List[Tuple[Any, ...]] = [()]
        self.service = ""

    # on the bus's loop thread
    def __call__(self, kind: int, arg: Any) -> None:
        if kind == 0:
            if self.stream:
                sink = _StreamSink(self.loop, self.max_queue)
                arg.set_callbacks(sink)
                s: Stream[Any, Any] = Stream(arg, self.method, sink, server_side=True)
                if not _post(self.loop, self._spawn, self._run_stream(s)):
                    s.close(PsrpcError("event loop is closed", code="unavailable"))
            elif not _post(self.loop, self._spawn_request, arg):
                arg.fail(Status.UNAVAILABLE, "event loop is closed")
        elif kind == 1:
            if self.affinity is not None and inspect.iscoroutinefunction(self.affinity):
                if not _post(self.loop, self._spawn_claim, arg):
                    arg.claim(-1.0)
            else:
                self._claim_sync(arg)
        elif kind == KIND_READY:
            _post(self.loop, self._set_ready, arg)
        elif kind == KIND_RELEASED:
            _post(self.loop, self._set_ready, None)

    def _set_ready(self, err: Any) -> None:
        if not self.ready.done():
            self.ready.set_result(from_wire(err) if err is not None else None)

    # on the event loop
    def _spawn(self, coro: Awaitable[Any]) -> None:
        task: "asyncio.Task[Any]" = self.loop.create_task(coro)  # type: ignore[arg-type]
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _spawn_request(self, req: Any) -> None:
        self._spawn(self._run(req))

    def _spawn_claim(self, req: Any) -> None:
        self._spawn(self._claim_async(req))

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        if inspect.iscoroutinefunction(fn):
            return await fn(*args)
        # The handler's contextvars (e.g. OpenTelemetry's current span, set by
        # an interceptor) go along to the executor thread, as asyncio.to_thread.
        ctx = contextvars.copy_context()
        result = await self.loop.run_in_executor(self.executor, functools.partial(ctx.run, fn,
                                                                                  *args))
        if inspect.isawaitable(result):
            result = await result
        return result

    async def _run(self, req: Any) -> None:
        m = self.method
        ctx = Context(req, m, self.server_id)
        chain = self.chain[0]
        call = _server.server_call(req, m, ctx, self.service, self.server_id) if chain else None
        error: Optional[BaseException] = None
        try:
            try:
                msg = m.decode_request(req.payload)
                if call is not None:
                    call.request = msg
                    run_before_handle(chain, call)
                result = await self._call(self.handler, msg, ctx)
            except BaseException as e:
                error = e
                _server.report(e, m, self.server_id)
                _server.fail(req, e)
                if not isinstance(e, Exception):
                    raise
                return
            error = _server.respond(req, m, result, self.server_id)
        finally:
            if call is not None:
                run_after_handle(chain, call, error)

    async def _run_stream(self, stream: "Stream[Any, Any]") -> None:
        chain = self.chain[0]
        call = (_server.server_call(None, self.method, None, self.service, self.server_id, stream)
                if chain else None)
        error: Optional[BaseException] = None
        try:
            if call is not None:
                run_before_handle(chain, call)
            await self._call(self.handler, stream)
        except BaseException as e:
            error = e
            _server.report(e, self.method, self.server_id, "stream handler")
            stream.close(e if isinstance(e, Exception) else Canceled("handler canceled"))
            if not isinstance(e, Exception):
                raise
        else:
            stream.close()
        finally:
            if call is not None:
                run_after_handle(chain, call, error if error is not None else stream.error)

    def _claim_sync(self, req: Any) -> None:
        try:
            msg = self.method.decode_request(req.payload)
        except PsrpcError as e:
            req.reject(e.code, e.message)  # undecodable: answered without a claim, as Go
            return
        try:
            a = self.affinity(msg, Context(req, self.method, self.server_id))  # type: ignore[misc]
        except Exception:
            log.exception("psrpc affinity function raised; declining")
            a = None
        req.claim(-1.0 if a is None else float(a))

    async def _claim_async(self, req: Any) -> None:
        try:
            msg = self.method.decode_request(req.payload)
        except PsrpcError as e:
            req.reject(e.code, e.message)  # undecodable: answered without a claim, as Go
            return
        try:
            a = await self.affinity(msg, Context(req, self.method, self.server_id))  # type: ignore[misc]
        except Exception:
            log.exception("psrpc affinity function raised; declining")
            a = None
        req.claim(-1.0 if a is None else float(a))


class Server:
    """An asyncio server. Handlers may be ``async def`` (run on the event loop)
    or plain functions (run in ``executor``, default the loop's). Create it in
    a running event loop; see ``psrpc.Server`` for the arguments."""

    def __init__(self, bus: Bus, service: ServiceLike, *,
                 executor: Optional[concurrent.futures.Executor] = None, **kwargs: Any) -> None:
        self._loop = asyncio.get_running_loop()
        self._exec = executor
        # The blocking server's handle management (its own pool stays unused).
        self._s = _server.Server(bus, service, executor=_NO_EXECUTOR, **kwargs)
        self._s._aio_loop = self._loop
        self.id = self._s.id
        self._tasks: Set["asyncio.Task[Any]"] = set()
        self._pending: List[_AsyncRegistration] = []

    @property
    def service(self) -> Any:
        return self._s.service

    def method(self, name: Union[str, Method]) -> Method:
        return self._s.method(name)

    def add_interceptor(self, interceptor: Any) -> None:
        """See ``psrpc.Server.add_interceptor`` (interceptors run on the event
        loop, in the handler's task: they must not block)."""
        self._s.add_interceptor(interceptor)

    def register_nowait(self, method: Union[str, Method], handler: Callable[..., Any], *,
                        topics: Topics = None, affinity: Optional[Callable[..., Any]] = None,
                        max_queue: int = 100) -> "asyncio.Future[Any]":
        """Registers and returns a future for its confirmation."""
        m = self._s.method(method)
        t = topic_list(topics)
        reg = _AsyncRegistration(self._loop, m, handler, affinity, self.id, self._exec,
                                 self._tasks, m.stream, max_queue)
        self._s._attach(reg)
        if m.stream:
            _core.psrpc_server_register_stream(self._s._check(), m._c, t,
                                               (reg, affinity is not None))
        else:
            _core.psrpc_server_register(self._s._check(), m._c, t, (reg, affinity is not None))
        self._pending.append(reg)
        return reg.ready

    async def register(self, method: Union[str, Method], handler: Callable[..., Any], *,
                       topics: Topics = None, affinity: Optional[Callable[..., Any]] = None,
                       timeout: float = 5.0) -> None:
        """Serves ``method`` with ``handler(request, context)`` (stream
        methods: ``handler(stream)``) and waits for the broker's confirmation."""
        ready = self.register_nowait(method, handler, topics=topics, affinity=affinity)
        await self._await_ready(ready, timeout)

    def handler(self, method: Union[str, Method], *, topics: Topics = None,
                affinity: Optional[Callable[..., Any]] = None) -> Callable[[Any], Any]:
        """Decorator: registers at once; ``await server.wait_ready()`` confirms."""

        def deco(fn: Any) -> Any:
            self.register_nowait(method, fn, topics=topics, affinity=affinity)
            return fn

        return deco

    async def _await_ready(self, ready: "asyncio.Future[Any]", timeout: float) -> None:
        try:
            err = await asyncio.wait_for(asyncio.shield(ready), timeout)
        except asyncio.TimeoutError:
            raise self._s._bus._not_confirmed("registration") from None
        if err is not None:
            raise err

    async def wait_ready(self, timeout: float = 5.0) -> None:
        """Waits until every registration so far is confirmed."""
        pending, self._pending = self._pending, []
        for reg in pending:
            await self._await_ready(reg.ready, timeout)

    def deregister(self, method: Union[str, Method], topics: Topics = None) -> None:
        self._s.deregister(method, topics)

    def publish(self, method: Union[str, Method], message: Any, topics: Topics = None) -> None:
        self._s.publish(method, message, topics)

    async def close(self, *, force: bool = False, timeout: Optional[float] = None) -> None:
        """Stops serving; unless ``force``, waits until in-flight requests
        were answered and their answers sent (the handlers keep running on
        this loop meanwhile). After ``timeout`` seconds the close is forced
        (``DeadlineExceeded``)."""
        self._s._closed = True
        self._s._wake.set()
        self._s._bus._forget(self._s)
        ptr = self._s._ptr
        if ptr is None:
            return
        fut: "asyncio.Future[Any]" = self._loop.create_future()
        try:
            _core.psrpc_server_close(ptr, _core.PSRPC_CLOSE_FORCE if force else 0,
                                     lambda: _post(self._loop, _settle, fut, None))
        except PsrpcError:
            return
        try:
            await asyncio.wait_for(asyncio.shield(fut), timeout)
        except asyncio.TimeoutError:
            try:
                _core.psrpc_server_close(ptr, _core.PSRPC_CLOSE_FORCE, None)
            except PsrpcError:
                pass
            raise DeadlineExceeded(
                f"server {self.id}: requests still in flight after {timeout:g} s") from None

    async def serve_forever(self, *, grace: Optional[float] = None,
                            signals: Sequence[int] = (signal.SIGINT, signal.SIGTERM),
                            on_start: Optional[Callable[[], object]] = None) -> None:
        """Serves until SIGINT or SIGTERM (or until the server or its bus is
        closed elsewhere, or the task is cancelled), then closes gracefully:
        requests in flight are answered and sent (waiting up to ``grace``
        seconds, default: their deadlines) before it returns. The signal
        handlers (``loop.add_signal_handler``) are removed when it returns;
        where they cannot be installed (not the main thread) it just waits.
        ``on_start()`` runs once they are installed (print a readiness line
        there: a signal sent after it is handled gracefully)."""
        stop = asyncio.Event()
        installed: List[int] = []
        for sig in signals:
            try:
                self._loop.add_signal_handler(sig, stop.set)
                installed.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):
                pass
        try:
            if on_start is not None:
                on_start()
            while not self._s._wake.is_set():
                try:
                    await asyncio.wait_for(stop.wait(), 0.25)
                    break
                except asyncio.TimeoutError:
                    pass
        except asyncio.CancelledError:
            await self._close_after_serving(grace)
            raise
        finally:
            for sig in installed:
                self._loop.remove_signal_handler(sig)
        await self._close_after_serving(grace)

    async def _close_after_serving(self, grace: Optional[float]) -> None:
        try:
            await self.close(timeout=grace)
        except DeadlineExceeded as e:
            log.warning("psrpc: %s", e.message)

    @property
    def closed(self) -> bool:
        return self._s.closed

    async def __aenter__(self) -> "Server":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()


class _NoExecutor(concurrent.futures.Executor):
    def submit(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover
        raise RuntimeError("not used")

    def shutdown(self, wait: bool = True, **kwargs: Any) -> None:
        pass


_NO_EXECUTOR = _NoExecutor()
