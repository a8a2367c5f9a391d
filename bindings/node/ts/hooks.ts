// Interceptors, retries and libpsrpc's log events (issue 16).
import { PsrpcError, asWireError } from './errors';
import { native } from './native';

export type CallKind = 'unary' | 'multi' | 'stream';

/** What an interceptor knows about a call (client) or a handled request (server). */
export interface CallInfo {
  kind: CallKind;
  role: 'client' | 'server';
  /** The service's wire name. */
  service: string;
  /** The method's wire name. */
  method: string;
  topics: readonly string[];
  /** Client side: this client's id; server side: the caller's. */
  clientId: string;
  /** Server side: this server's id. */
  serverId?: string;
  /** Server side: the request (stream) id. */
  requestId?: string;
  /** The deadline the request carries (Unix ns), when known. */
  deadlineNs?: bigint;
}

/** The outcome of a call (client) or of a handled request (server). */
export interface CallOutcome {
  /** Absent on success (a clean stream close is a success). */
  error?: PsrpcError;
  /** Client: from the call to its outcome; server: from the request's arrival at the handler to its answer. */
  durationMs: number;
  /** The answering server, when known. */
  serverId?: string;
  /** Client unary calls: attempts made (retries; 0 when an interceptor failed it); otherwise 1. */
  attempts: number;
  /** Client multi calls: results and error results delivered. */
  responses?: number;
  errors?: number;
}

/**
 * Sees every call of a client. `beforeSend` runs synchronously when the call
 * starts, once per call (not per retry attempt): it may change `metadata`
 * (what the call sends) or throw to fail the call (a PsrpcError keeps its
 * code; anything else fails it with `unknown`); later interceptors then do
 * not run and nothing is sent. `onOutcome` runs once with the final outcome.
 */
export interface ClientInterceptor {
  beforeSend?(info: CallInfo, metadata: Map<string, string>): void;
  onOutcome?(info: CallInfo, outcome: CallOutcome): void;
}

/**
 * Sees every request a server handles: `beforeHandle` just before the
 * handler (a throw rejects the request: the caller gets the error, the
 * handler never runs; a stream is closed with it), `onOutcome` once it is
 * answered (a stream: once it ended).
 */
export interface ServerInterceptor {
  beforeHandle?(info: CallInfo, metadata: ReadonlyMap<string, string>): void;
  onOutcome?(info: CallInfo, outcome: CallOutcome): void;
}

/**
 * A client's retry policy: livekit/psrpc v0.8.2 `middleware.RetryOptions`.
 * Attempt n gets the timeout `timeoutMs + (n-1) * backoffMs` unless the call
 * set its own `timeoutMs`; a call's deadline bounds every attempt. The next
 * attempt starts at once (as in Go, the backoff grows the attempt timeout; it
 * is no sleep). Multi calls are never retried (as in Go).
 */
export interface RetryOptions {
  /** Attempts in all; 0 = no limit (Go's zero value: the deadline ends it). */
  maxAttempts?: number;
  /** The first attempt's timeout (ms; default the client's). */
  timeoutMs?: number;
  /** Added to the attempt timeout after each failed attempt (ms). */
  backoffMs?: number;
  /** The error codes retried (default: deadline_exceeded, unavailable: Go's isTimeout). */
  retryOn?: string[];
  /** Also retry stream opens. */
  streamOpen?: boolean;
}

/** @internal validated native retry options */
export function nativeRetries(r: RetryOptions | null | undefined): object | null {
  if (r === undefined || r === null) return null;
  if (typeof r !== 'object') throw new TypeError('retries must be an object');
  const n = (v: unknown, what: string): number => {
    if (v === undefined) return 0;
    if (typeof v !== 'number' || !(v >= 0) || !Number.isFinite(v)) throw new TypeError(`retries.${what} must be a non-negative number`);
    return v;
  };
  if (r.retryOn !== undefined && (!Array.isArray(r.retryOn) || r.retryOn.some((c) => typeof c !== 'string')))
    throw new TypeError('retries.retryOn must be an array of code strings');
  return {
    maxAttempts: n(r.maxAttempts, 'maxAttempts'),
    timeoutMs: n(r.timeoutMs, 'timeoutMs'),
    backoffMs: n(r.backoffMs, 'backoffMs'),
    retryOn: r.retryOn,
    streamOpen: !!r.streamOpen,
  };
}

/** @internal */
export function checkInterceptors(list: unknown, what: string): any[] {
  if (list === undefined) return [];
  if (!Array.isArray(list)) throw new TypeError(`${what} must be an array`);
  for (const i of list)
    if (i === null || typeof i !== 'object') throw new TypeError(`${what} must be objects with beforeSend/beforeHandle/onOutcome methods`);
  return [...list];
}

/** @internal Runs the client interceptors' beforeSend; returns the metadata to send. */
export function runBeforeSend(
  list: readonly ClientInterceptor[],
  info: CallInfo,
  md: [string, string][] | undefined,
): [string, string][] | undefined {
  if (list.length === 0) return md;
  const map = new Map<string, string>(md ?? []);
  for (const i of list) {
    if (typeof i.beforeSend !== 'function') continue;
    try {
      i.beforeSend(info, map);
    } catch (e) {
      throw asWireError(e);
    }
  }
  for (const [k, v] of map)
    if (typeof k !== 'string' || typeof v !== 'string') throw new TypeError('metadata keys and values must be strings');
  return [...map];
}

/** @internal Runs the onOutcome interceptors (their throws are reported, never propagated). */
export function runOutcome(list: readonly (ClientInterceptor | ServerInterceptor)[], info: CallInfo, o: CallOutcome): void {
  for (const i of list) {
    if (typeof i.onOutcome !== 'function') continue;
    try {
      i.onOutcome(info, o);
    } catch (e) {
      process.emitWarning(`psrpc: an interceptor's onOutcome threw: ${String(e)}`);
    }
  }
}

/** @internal Runs the server interceptors' beforeHandle; a throw rejects the request. */
export function runBeforeHandle(list: readonly ServerInterceptor[], info: CallInfo, md: readonly (readonly [string, string])[]): void {
  if (list.length === 0) return;
  const map = new Map<string, string>(md as [string, string][]);
  for (const i of list) if (typeof i.beforeHandle === 'function') i.beforeHandle(info, map);
}

// ---- logs -----------------------------------------------------------------

export type LogLevel = 'error' | 'warn' | 'info' | 'debug';
const LEVELS: LogLevel[] = ['error', 'warn', 'info', 'debug'];
export type LogHandler = (level: LogLevel, component: string, message: string) => void;

let logHandler: LogHandler | null = null;

function dispatchLog(level: number, component: string, message: string): void {
  const h = logHandler;
  if (h) h(LEVELS[level - 1] ?? 'debug', component, message);
}

/**
 * Receives libpsrpc's log events ("bus": connected / lost / reconnected;
 * "drop": dropped messages, the first of a reason then at most one summary
 * per 10 s; "stream": slow consumers) up to `level` (default 'info'); `null`
 * turns them off. Off by default; one handler per process. Setting
 * NODE_DEBUG=psrpc before loading the module logs them with util.debuglog.
 */
export function setLogHandler(handler: LogHandler | null, options: { level?: LogLevel } = {}): void {
  if (handler !== null && typeof handler !== 'function') throw new TypeError('handler must be a function or null');
  const level = options.level ?? 'info';
  const n = LEVELS.indexOf(level);
  if (n < 0) throw new TypeError(`level must be one of ${LEVELS.join(', ')}`);
  logHandler = handler;
  native.SetLogCallback(handler ? dispatchLog : null, n + 1);
}

