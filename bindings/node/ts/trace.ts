// W3C trace context in request metadata, exactly as livekit/psrpc's
// otelpsrpc writes it: "traceparent" = 00-<32 hex trace id>-<16 hex span
// id>-<2 hex flags>, "tracestate" only when not empty.
import { randomBytes } from 'node:crypto';
import type { ClientInterceptor } from './hooks';

export const TRACEPARENT = 'traceparent';
export const TRACESTATE = 'tracestate';

const RE = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/;

/** A W3C trace context: a valid traceparent and an optional tracestate. */
export class TraceContext {
  readonly traceparent: string;
  readonly tracestate: string | undefined;

  /** Throws a TypeError for an invalid traceparent (W3C: version ff, zero ids, not lowercase hex). */
  constructor(traceparent: string, tracestate?: string) {
    const m = typeof traceparent === 'string' ? RE.exec(traceparent) : null;
    if (!m || m[1] === 'ff' || /^0+$/.test(m[2]) || /^0+$/.test(m[3])) throw new TypeError(`invalid traceparent ${JSON.stringify(traceparent)}`);
    if (tracestate !== undefined && typeof tracestate !== 'string') throw new TypeError('tracestate must be a string');
    this.traceparent = traceparent;
    this.tracestate = tracestate ? tracestate : undefined;
  }

  /** The trace context in request metadata (last value of each key, as Go reads it), if valid. */
  static fromMetadata(md: Iterable<readonly [string, string]>): TraceContext | undefined {
    let tp: string | undefined, ts: string | undefined;
    for (const [k, v] of md) {
      if (k === TRACEPARENT) tp = v;
      else if (k === TRACESTATE) ts = v;
    }
    if (tp === undefined) return undefined;
    try {
      return new TraceContext(tp, ts);
    } catch {
      return undefined;
    }
  }

  get traceId(): string {
    return this.traceparent.slice(3, 35);
  }
  get spanId(): string {
    return this.traceparent.slice(36, 52);
  }
  get sampled(): boolean {
    return (parseInt(this.traceparent.slice(53, 55), 16) & 1) === 1;
  }

  /** A child: the same trace id, flags and state, a new random span id. */
  child(): TraceContext {
    let span: string;
    do span = randomBytes(8).toString('hex');
    while (/^0+$/.test(span));
    return new TraceContext(`${this.traceparent.slice(0, 36)}${span}${this.traceparent.slice(52)}`, this.tracestate);
  }

  /** The metadata entries: traceparent, and tracestate when present. */
  toMetadata(): [string, string][] {
    const out: [string, string][] = [[TRACEPARENT, this.traceparent]];
    if (this.tracestate) out.push([TRACESTATE, this.tracestate]);
    return out;
  }

  /**
   * The span context of an OpenTelemetry context (default: the active one),
   * if it has a valid span. Needs the optional peer dependency @opentelemetry/api.
   */
  static fromOtel(ctx?: unknown): TraceContext | undefined {
    const api = otelApi();
    const sc = api.trace.getSpanContext((ctx as any) ?? api.context.active());
    if (!sc || !api.isSpanContextValid(sc)) return undefined;
    const flags = (sc.traceFlags & 0xff).toString(16).padStart(2, '0');
    return new TraceContext(`00-${sc.traceId}-${sc.spanId}-${flags}`, sc.traceState?.serialize());
  }

  /** An OpenTelemetry context whose remote parent is this trace context (start a handler's spans under it). */
  toOtel(parent?: unknown): unknown {
    const api = otelApi();
    const state = this.tracestate && typeof api.createTraceState === 'function' ? api.createTraceState(this.tracestate) : undefined;
    return api.trace.setSpanContext((parent as any) ?? api.ROOT_CONTEXT, {
      traceId: this.traceId,
      spanId: this.spanId,
      traceFlags: parseInt(this.traceparent.slice(53, 55), 16),
      isRemote: true,
      traceState: state,
    });
  }
}

let api: any;
function otelApi(): any {
  if (api) return api;
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    api = require('@opentelemetry/api');
  } catch {
    throw new Error('psrpc: OpenTelemetry support needs the @opentelemetry/api package (npm install @opentelemetry/api)');
  }
  return api;
}

/**
 * A client interceptor sending the active OpenTelemetry span context with
 * every call (as otelpsrpc's client interceptor injects it), unless the call
 * already carries a traceparent. Needs @opentelemetry/api.
 *
 *     new Client(bus, Svc, { interceptors: [otelPropagation()] })
 */
export function otelPropagation(): ClientInterceptor {
  otelApi(); // fail at once when the package is missing
  return {
    beforeSend(_info, md) {
      if (md.has(TRACEPARENT)) return;
      const t = TraceContext.fromOtel();
      if (!t) return;
      for (const [k, v] of t.toMetadata()) md.set(k, v);
    },
  };
}
