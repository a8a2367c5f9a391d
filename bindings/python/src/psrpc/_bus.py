"""The bus: one connection (local, Redis or NATS) and its loop thread."""

from __future__ import annotations

import asyncio
import atexit
import os
import threading
import time
import weakref
from typing import Any, Callable, Dict, List, Optional, Tuple, cast

from . import _core
from ._errors import (Canceled, DeadlineExceeded, InvalidArgument, PsrpcError, Unavailable,
                      from_wire)

__all__ = ["Bus", "BusState"]


class BusState:
    CONNECTED = _core.PSRPC_BUS_CONNECTED
    DISCONNECTED = _core.PSRPC_BUS_DISCONNECTED
    CLOSED = _core.PSRPC_BUS_CLOSED


_OPTION_FIELDS = (
    # (keyword, kind, scale): the order of psrpc_bus_options after flags
    ("max_message_size", int, 1),
    ("queue_capacity", int, 1),
    ("connect_timeout", float, 1000),
    ("ping_interval", float, 1000),
    ("reconnect_wait", float, 1000),
    ("reconnect_wait_max", float, 1000),
    ("compress_threshold", int, 1),
    ("reconnect_buffer_size", int, 1),
)
_STRING_FIELDS = ("tls_ca_file", "tls_cert_file", "tls_key_file", "tls_server_name",
                  "nats_creds_file", "nats_nkey_seed_file", "channel_prefix")

_live_buses: "weakref.WeakSet[Bus]" = weakref.WeakSet()


class _Watch:
    """The bus's state watcher (held by the C bus; never references the Bus).

    It records the first connection outcome: until the first connection
    attempt succeeded or failed, calls wait for it (bounded by their
    timeout), so that a call on an unreachable broker fails with the
    connection error instead of waiting out its deadline. It also forwards
    every change to the user's ``Bus.watch`` callback."""

    __slots__ = ("settled", "state", "error", "user", "lock", "waiters")

    def __init__(self) -> None:
        self.settled = threading.Event()
        self.state = 0
        self.error: Optional[PsrpcError] = None
        self.user: Optional[Callable[[int, Optional[PsrpcError]], None]] = None
        self.lock = threading.Lock()
        self.waiters: List[Callable[[], None]] = []

    def __call__(self, state: int, err: Any) -> None:
        error = from_wire(err) if err is not None else None
        self.state = state
        self.error = error
        if state == BusState.CONNECTED or state == BusState.CLOSED or error is not None:
            self.settle()
        user = self.user
        if user is not None:
            user(state, error)

    def settle(self) -> None:
        with self.lock:
            if self.settled.is_set():
                return
            self.settled.set()
            waiters, self.waiters = self.waiters, []
        for fn in waiters:
            try:
                fn()
            except Exception:  # pragma: no cover - waiters do not raise
                pass

    def when_settled(self, fn: Callable[[], None]) -> bool:
        """Runs fn (on the loop thread) once settled; False when already
        settled (fn is not called)."""
        with self.lock:
            if self.settled.is_set():
                return False
            self.waiters.append(fn)
            return True


def _options_tuple(options: Dict[str, Any]) -> Optional[Tuple[Any, ...]]:
    if not options:
        return None
    opts = dict(options)
    flags = _core.PSRPC_BUS_TLS if opts.pop("tls", False) else 0
    values: List[Any] = [flags]
    for key, kind, scale in _OPTION_FIELDS:
        v = opts.pop(key, None)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            unit = " (seconds)" if kind is float else ""
            raise TypeError(f"Bus option {key} must be a number{unit}, "
                            f"not {type(v).__name__} {v!r}")
        if v is not None and v < 0:
            raise ValueError(f"Bus option {key} must not be negative, not {v!r}")
        values.append(0 if v is None else int(round(v * scale)))
    for key in _STRING_FIELDS:
        v = opts.pop(key, None)
        if v is not None and not isinstance(v, (str, os.PathLike)):
            raise TypeError(f"Bus option {key} must be a str, not {type(v).__name__}")
        values.append(None if v is None else os.fspath(v))
    if opts:
        raise TypeError(f"unknown bus options: {', '.join(sorted(opts))}")
    return tuple(values)


class Bus:
    """A bus: ``Bus()`` (in-process, private), ``Bus("local://name")`` (shared
    by every bus of this process opened with the same name),
    ``Bus("redis://127.0.0.1:6379")``, ``Bus("nats://127.0.0.1:4222")``.

    Options (seconds for durations): ``tls``, ``max_message_size``,
    ``queue_capacity``, ``connect_timeout``, ``ping_interval``,
    ``reconnect_wait``, ``reconnect_wait_max``, ``compress_threshold``,
    ``reconnect_buffer_size``, ``tls_ca_file``, ``tls_cert_file``,
    ``tls_key_file``, ``tls_server_name``, ``nats_creds_file``,
    ``nats_nkey_seed_file``, ``channel_prefix``.

    Closing (``close()``, the end of a ``with`` block, garbage collection or
    interpreter exit) closes every client, server and subscription made on
    it and waits until none of their callbacks runs any more.
    """

    def __init__(self, url: str = "local://", *, wait_ready: Optional[float] = None,
                 **options: Any) -> None:
        if not isinstance(url, str):
            raise TypeError(f"Bus url must be a str, not {type(url).__name__}")
        if not url.strip():
            # An unset environment variable must not silently become a
            # private in-process bus.
            raise InvalidArgument(
                "bus URL is empty: pass redis://HOST:PORT, nats://HOST:PORT or local:// "
                "(Bus() with no argument is a private in-process bus)")
        opts = _options_tuple(options)
        self.url = url
        self._ptr: Any = None
        self._cond = threading.Condition()
        self._users = 0
        self._closed = False
        self._children: "weakref.WeakSet[Any]" = weakref.WeakSet()
        # Servers are active objects: they serve until closed (or the bus
        # closes), also when the program keeps no reference to them.
        self._servers: "set[Any]" = set()
        self._watch = _Watch()
        self._ptr = _core.psrpc_bus_open(url, opts)
        _live_buses.add(self)
        try:
            _core.psrpc_bus_watch(self._ptr, self._watch)
        except PsrpcError:
            self._watch.settle()
        if wait_ready is not None:
            self.wait_ready(wait_ready)

    # ---- handle use: close waits for calls that use the C handle ----
    def _acquire(self) -> Any:
        with self._cond:
            if self._closed or self._ptr is None:
                raise Canceled("bus is closed")
            self._users += 1
            return self._ptr

    def _release(self) -> None:
        with self._cond:
            self._users -= 1
            if self._users == 0:
                self._cond.notify_all()

    def _with(self, fn: Callable[..., Any], *args: Any) -> Any:
        ptr = self._acquire()
        try:
            return fn(ptr, *args)
        finally:
            self._release()

    def _adopt(self, child: Any, keep: bool = False) -> None:
        self._children.add(child)
        if keep:
            with self._cond:
                self._servers.add(child)

    def _forget(self, child: Any) -> None:
        with self._cond:
            self._servers.discard(child)

    @property
    def closed(self) -> bool:
        return self._closed

    def wait_ready(self, timeout: float = 5.0) -> None:
        """Blocks until the bus is connected (local: at once)."""
        self._with(_core.psrpc_bus_wait_ready, int(timeout * 1000))

    def _wait_connect(self, timeout: Optional[float]) -> float:
        """Waits (up to timeout seconds, None: 5 s) until the first
        connection attempt succeeded or failed; returns the seconds waited."""
        w = self._watch
        if w.settled.is_set() or _core.on_loop_thread():
            return 0.0
        t0 = time.monotonic()
        w.settled.wait(5.0 if timeout is None else timeout)
        return time.monotonic() - t0

    def _not_confirmed(self, what: str) -> PsrpcError:
        """The error for a registration or subscription the broker did not
        confirm in time: Unavailable with the connection error while the bus
        is disconnected, else DeadlineExceeded."""
        w = self._watch
        if w.state == BusState.DISCONNECTED and w.error is not None:
            return Unavailable(f"{what} was not confirmed in time: bus {self.url} is not "
                               f"connected: {w.error.message}")
        return DeadlineExceeded(f"{what} was not confirmed in time")

    def stats(self) -> Dict[str, int]:
        """The bus counters (messages, drops by reason, reconnects, ...)."""
        return cast("Dict[str, int]", self._with(_core.psrpc_bus_get_stats))

    def watch(self, callback: Callable[[int, Optional[PsrpcError]], None]) -> None:
        """Calls ``callback(state, error)`` on every connection state change,
        first with the current state (``BusState``). It runs on the bus's loop
        thread and must not block. A second watch replaces the first."""

        self._watch.user = callback
        # Watching again makes the library report the current state first.
        self._with(_core.psrpc_bus_watch, self._watch)

    def client(self, service: Any, **kwargs: Any) -> Any:
        from ._client import Client

        return Client(self, service, **kwargs)

    def server(self, service: Any, **kwargs: Any) -> Any:
        from ._server import Server

        return Server(self, service, **kwargs)

    def close(self, *, force: bool = False, timeout: Optional[float] = None) -> None:
        """Closes the bus and everything on it; idempotent. Its servers close
        first, gracefully unless ``force``: requests in flight are answered
        and those answers sent before the connection closes (waiting up to
        ``timeout`` seconds per server, default: the requests' deadlines).
        After it returns no callback of this bus runs (unless called from
        inside one)."""
        with self._cond:
            if self._closed:
                return
            servers = list(self._servers)
        for server in servers:
            try:
                server.close(force=force, timeout=timeout)
            except Exception:
                pass
        with self._cond:
            if self._closed:
                return
            self._closed = True
            ptr = self._ptr
        if ptr is None:
            return
        try:
            _core.psrpc_bus_close(ptr, None)  # wakes waiters, fails calls in flight
        except PsrpcError:
            pass
        with self._cond:
            while self._users:
                self._cond.wait()
            self._ptr = None
        with self._cond:
            self._servers.clear()
        for child in list(self._children):
            try:
                child._bus_closed()
            except Exception:
                pass
        _core.psrpc_bus_free(ptr)  # joins the loop thread (GIL released)
        _live_buses.discard(self)

    def __enter__(self) -> "Bus":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    async def __aenter__(self) -> "Bus":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """``close()`` for asyncio: the closing (which drains this bus's
        servers and joins its loop thread) runs on a worker thread while the
        event loop keeps running, so handlers running on the event loop can
        still answer."""
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        done: "asyncio.Future[None]" = loop.create_future()

        def run() -> None:
            try:
                self.close()
                err: Optional[BaseException] = None
            except BaseException as e:  # noqa: B902 - handed to the awaiting task
                err = e
            try:
                loop.call_soon_threadsafe(_finish, done, err)
            except RuntimeError:
                pass  # the event loop closed meanwhile

        threading.Thread(target=run, name="psrpc-bus-aclose", daemon=True).start()
        await asyncio.shield(done)

    def __del__(self) -> None:
        if getattr(self, "_closed", True):
            return
        ptr = self._ptr
        self._closed = True
        self._ptr = None
        try:
            if _core.on_loop_thread():
                _core.psrpc_bus_free(ptr)  # detaches its own thread
            else:
                # Not here: a finalizer may run while this thread holds a lock
                # a callback of this bus waits for. Join on a helper thread.
                _core.psrpc_bus_close(ptr, None)
                threading.Thread(target=_core.psrpc_bus_free, args=(ptr,), daemon=True,
                                 name="psrpc-bus-free").start()
        except Exception:
            try:
                _core.psrpc_bus_free(ptr)
            except Exception:
                pass

    def __repr__(self) -> str:
        return f"Bus({self.url!r}{', closed' if self._closed else ''})"


def _finish(fut: "asyncio.Future[None]", err: Optional[BaseException]) -> None:
    if fut.done():
        return
    if err is None:
        fut.set_result(None)
    else:
        fut.set_exception(err)


def _stop_servers() -> None:
    # When the main thread ends, before non-daemon threads (the handler pools
    # among them) are joined: servers close gracefully (their streams end, so
    # handlers blocked on one return), and the answers of handlers still
    # running are sent before the buses close (the library bounds the wait by
    # the requests' deadlines). Clients keep working for the program's other
    # threads until the buses close below.
    for bus in list(_live_buses):
        with bus._cond:
            servers = list(bus._servers)
        for server in servers:
            try:
                server.close()
            except Exception:
                pass


# Registered after concurrent.futures' own hook (which joins the handler
# pools), so it runs before it: these hooks run in reverse order.
import concurrent.futures.thread  # noqa: E402,F401

_register_threading_atexit = getattr(threading, "_register_atexit", None)
if _register_threading_atexit is not None:
    _register_threading_atexit(_stop_servers)


@atexit.register
def _close_all_buses() -> None:
    # Before the interpreter finalizes: loop threads can still take the GIL to
    # finish their callbacks, and are joined here.
    for bus in list(_live_buses):
        try:
            bus.close()
        except Exception:
            pass
