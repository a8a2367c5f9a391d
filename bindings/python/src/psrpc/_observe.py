"""Retries, the library's logs and per-method metrics (the C ABI of issue 16).

These ride on the C library, not on Python interceptors: retries happen on
the bus's loop thread without the GIL (an attempt's failure never wakes
Python), and metrics are counted in C (two atomic adds per call), read only
when you ask. Log events are rare (connects, losses, drop summaries): each
takes the GIL once on the thread where it happened.
"""

from __future__ import annotations

import atexit
import logging
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from . import _core

__all__ = ["RetryOptions", "enable_logging", "disable_logging", "Metrics", "MethodMetrics"]


@dataclass(frozen=True)
class RetryOptions:
    """livekit/psrpc v0.8.2's ``middleware.RetryOptions`` for a client's
    unary calls (``streams=True``: stream opens too; multi calls never).

    Attempt n gets ``timeout + (n-1) * backoff`` seconds when that is > 0 and
    the call gave no ``timeout=`` of its own (a caller's timeout wins, for
    every attempt); a call's ``deadline=`` bounds every attempt. A failed
    attempt is retried at once (Go waits nothing: the backoff grows the
    timeout) if its code is in ``codes`` (default, Go's ``isTimeout``:
    deadline_exceeded, unavailable) and fewer than ``max_attempts`` ran
    (0: no limit, Go's zero value); a call whose deadline passed ends with
    ``Canceled`` ("request canceled", as Go). Each attempt is a new request;
    interceptors see the call once."""

    max_attempts: int = 0
    timeout: float = 0.0
    backoff: float = 0.0
    codes: Optional[Sequence[str]] = None
    streams: bool = False

    def _apply(self, client_ptr: Any) -> None:
        if self.max_attempts < 0 or self.timeout < 0 or self.backoff < 0:
            raise ValueError("RetryOptions values must not be negative")
        codes = tuple(self.codes) if self.codes is not None else None
        kinds = _core.PSRPC_RETRY_UNARY | (_core.PSRPC_RETRY_STREAM_OPEN if self.streams else 0)
        _core.client_set_retries(client_ptr, kinds, int(self.max_attempts),
                                 int(self.timeout * 1000), int(self.backoff * 1000), codes,
                                 "\0".join(codes) if codes is not None else "")


# ---- logs ----

_LEVELS = {1: logging.ERROR, 2: logging.WARNING, 3: logging.INFO, 4: logging.DEBUG}


def _emit(level: int, component: str, message: str) -> None:
    logging.getLogger(f"psrpc.{component}").log(_LEVELS.get(level, logging.DEBUG), "%s",
                                                message)


def enable_logging(level: Optional[int] = None) -> None:
    """Sends the C library's log events to Python ``logging``: logger
    ``psrpc.<component>`` ("psrpc.bus": connected / reconnected at INFO,
    connection lost at WARNING, authentication refused at ERROR;
    "psrpc.drop": dropped messages by reason, the first at WARNING then at most
    one summary per reason per 10 s; "psrpc.stream": slow consumers), never
    one line per message above DEBUG. Events below ``level`` (default: the
    effective level of the ``psrpc`` logger now) are not even formatted.
    Off until called; process-wide."""
    if level is None:
        level = logging.getLogger("psrpc").getEffectiveLevel()
    max_level = 4 if level <= logging.DEBUG else 3 if level <= logging.INFO else \
        2 if level <= logging.WARNING else 1
    _core.set_log_callback(_emit, max_level)


def disable_logging() -> None:
    """Stops the C library's log events (the default)."""
    _core.set_log_callback(None, 0)


atexit.register(disable_logging)


# ---- metrics ----

_ROLES = {1: "client", 2: "server"}
_KINDS = {1: "unary", 2: "multi", 3: "stream"}


@dataclass
class MethodMetrics:
    """One (role, service, method) row. ``buckets``: cumulative
    ``(upper bound in seconds, count)``, the last bound ``inf``."""

    role: str
    kind: str
    service: str
    method: str
    calls: int
    errors: int
    attempts: int
    latency_sum: float
    buckets: List[Tuple[float, int]]
    error_codes: Dict[str, int] = field(default_factory=dict)


class Metrics:
    """Per-method counters and latency histograms kept by the C library for
    the clients and servers attached (``Client(..., metrics=m)``,
    ``Server(..., metrics=m)`` or ``m.attach(obj)``): calls, errors (by
    code), attempts (client retries included), latency buckets (Prometheus'
    default bounds, 5 ms .. 10 s). ``prometheus_text()`` is the text
    exposition; ``collector()`` a ``prometheus_client`` collector."""

    def __init__(self) -> None:
        self._ptr = _core.psrpc_metrics_new()

    def attach(self, obj: Any) -> Any:
        """Counts obj's calls (a client) or handled requests (a server) from
        now on; any psrpc / psrpc.aio / typed client or server. Returns obj."""
        from ._client import Client
        from ._server import Server

        inner = obj
        for _ in range(3):  # typed -> aio -> blocking
            if isinstance(inner, (Client, Server)) or inner is None:
                break
            inner = next((getattr(inner, a) for a in ("client", "server", "_c", "_s")
                          if getattr(inner, a, None) is not None), None)
        if isinstance(inner, Client):
            _core.psrpc_metrics_attach_client(self._ptr, inner._check())
        elif isinstance(inner, Server):
            _core.psrpc_metrics_attach_server(self._ptr, inner._check())
        else:
            raise TypeError(f"Metrics.attach takes a psrpc client or server, "
                            f"not {type(obj).__name__}")
        return obj

    def collect(self) -> List[MethodMetrics]:
        rows, codes = _core.metrics_read(self._ptr)
        bounds = [_core.psrpc_metrics_bucket_bound_ms(i) / 1000
                  for i in range(_core.PSRPC_METRICS_BUCKETS)]
        out: Dict[Tuple[int, str, str], MethodMetrics] = {}
        for role, kind, svc, meth, calls, errors, attempts, lat_ns, buckets in rows:
            acc, cum = 0, []
            for b, n in zip(bounds, buckets):
                acc += n
                cum.append((float("inf") if b < 0 else b, acc))
            out[(role, svc, meth)] = MethodMetrics(_ROLES.get(role, str(role)),
                                                   _KINDS.get(kind, str(kind)), svc, meth, calls,
                                                   errors, attempts, lat_ns / 1e9, cum)
        for role, _kind, svc, meth, code, count in codes:
            row = out.get((role, svc, meth))
            if row is not None:
                row.error_codes[code] = count
        return list(out.values())

    def prometheus_text(self, prefix: str = "psrpc") -> str:
        """The Prometheus text exposition (format 0.0.4) of every row:
        ``<prefix>_requests_total``, ``<prefix>_errors_total`` (label
        ``code``), ``<prefix>_attempts_total`` (clients) and the histogram
        ``<prefix>_request_duration_seconds``, labelled role, kind, service,
        method."""
        rows = self.collect()
        p = prefix
        lines: List[str] = []

        def family(name: str, typ: str, help_: str) -> None:
            lines.append(f"# HELP {p}_{name} {help_}")
            lines.append(f"# TYPE {p}_{name} {typ}")

        family("requests_total", "counter",
               "Calls made (client) and requests handled (server), by outcome counted once.")
        for r in rows:
            lines.append(f"{p}_requests_total{{{_labels(r)}}} {r.calls}")
        family("errors_total", "counter", "Calls and handled requests that ended in an error.")
        for r in rows:
            for code, n in sorted(r.error_codes.items()):
                lines.append(f"{p}_errors_total{{{_labels(r, code=code)}}} {n}")
        family("attempts_total", "counter", "Client attempts, retries included.")
        for r in rows:
            if r.role == "client":
                lines.append(f"{p}_attempts_total{{{_labels(r)}}} {r.attempts}")
        family("request_duration_seconds", "histogram",
               "Client: call to outcome; server: arrival to answer.")
        for r in rows:
            for bound, n in r.buckets:
                le = "+Inf" if bound == float("inf") else repr(bound)
                lines.append(f"{p}_request_duration_seconds_bucket{{{_labels(r, le=le)}}} {n}")
            lines.append(f"{p}_request_duration_seconds_sum{{{_labels(r)}}} {r.latency_sum!r}")
            lines.append(f"{p}_request_duration_seconds_count{{{_labels(r)}}} {r.calls}")
        return "\n".join(lines) + "\n"

    def collector(self, prefix: str = "psrpc") -> Any:
        """A ``prometheus_client`` collector of these metrics (needs
        ``prometheus_client``): ``REGISTRY.register(metrics.collector())``."""
        from prometheus_client.core import (  # type: ignore[import-not-found,unused-ignore]
            CounterMetricFamily, HistogramMetricFamily)

        metrics = self

        class _Collector:
            def collect(self) -> Any:
                names = ["role", "kind", "service", "method"]
                req = CounterMetricFamily(f"{prefix}_requests", "psrpc calls and requests",
                                          labels=names)
                err = CounterMetricFamily(f"{prefix}_errors", "psrpc errors",
                                          labels=names + ["code"])
                hist = HistogramMetricFamily(f"{prefix}_request_duration_seconds",
                                             "psrpc latency", labels=names)
                for r in metrics.collect():
                    lv = [r.role, r.kind, r.service, r.method]
                    req.add_metric(lv, r.calls)
                    for code, n in r.error_codes.items():
                        err.add_metric(lv + [code], n)
                    hist.add_metric(lv, [("+Inf" if b == float("inf") else repr(b), n)
                                         for b, n in r.buckets], r.latency_sum)
                yield req
                yield err
                yield hist

        return _Collector()

    def __del__(self) -> None:
        ptr, self._ptr = getattr(self, "_ptr", None), None
        if ptr is not None:
            try:
                _core.psrpc_metrics_free(ptr)
            except Exception:
                pass


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", "\\n")


def _labels(r: MethodMetrics, **extra: str) -> str:
    kv = [("role", r.role), ("kind", r.kind), ("service", r.service), ("method", r.method)]
    kv += list(extra.items())
    return ",".join(f'{k}="{_esc(v)}"' for k, v in kv)
