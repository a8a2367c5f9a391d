"""The bus: one connection (local, Redis or NATS) and its loop thread."""

from __future__ import annotations

import atexit
import threading
import weakref
from typing import Any, Callable, Dict, Optional

from . import _core
from ._errors import Canceled, PsrpcError, from_wire

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


def _options_tuple(options: Dict[str, Any]) -> Optional[tuple]:
    if not options:
        return None
    opts = dict(options)
    flags = _core.PSRPC_BUS_TLS if opts.pop("tls", False) else 0
    values: list = [flags]
    for key, _kind, scale in _OPTION_FIELDS:
        v = opts.pop(key, None)
        values.append(0 if v is None else int(round(v * scale)))
    for key in _STRING_FIELDS:
        v = opts.pop(key, None)
        values.append(None if v is None else str(v))
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
        self.url = url
        self._ptr: Any = None
        self._cond = threading.Condition()
        self._users = 0
        self._closed = False
        self._children: "weakref.WeakSet[Any]" = weakref.WeakSet()
        # Servers are active objects: they serve until closed (or the bus
        # closes), also when the program keeps no reference to them.
        self._servers: "set[Any]" = set()
        self._ptr = _core.psrpc_bus_open(url, _options_tuple(options))
        _live_buses.add(self)
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

    def stats(self) -> Dict[str, int]:
        """The bus counters (messages, drops by reason, reconnects, ...)."""
        return self._with(_core.psrpc_bus_get_stats)

    def watch(self, callback: Callable[[int, Optional[PsrpcError]], None]) -> None:
        """Calls ``callback(state, error)`` on every connection state change,
        first with the current state (``BusState``). It runs on the bus's loop
        thread and must not block. A second watch replaces the first."""

        def on_state(state: int, err: Any) -> None:
            callback(state, from_wire(err) if err is not None else None)

        self._with(_core.psrpc_bus_watch, on_state)

    def client(self, service: Any, **kwargs: Any) -> Any:
        from ._client import Client

        return Client(self, service, **kwargs)

    def server(self, service: Any, **kwargs: Any) -> Any:
        from ._server import Server

        return Server(self, service, **kwargs)

    def close(self) -> None:
        """Closes the bus and everything on it; idempotent. After it returns no
        callback of this bus runs (unless called from inside one)."""
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
        self.close()

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


def _stop_servers() -> None:
    # When the main thread ends, before non-daemon threads (the handler pools
    # among them) are joined: servers stop, so handlers blocked on one of
    # their streams see it end and return. Clients keep working for the
    # program's other threads until the buses close below.
    for bus in list(_live_buses):
        with bus._cond:
            servers = list(bus._servers)
        for server in servers:
            try:
                server.close(force=True, timeout=2.0)
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
