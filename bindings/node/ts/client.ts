// Client: unary and multi calls, subscriptions, streams.
import { BusHold } from './bus';
import type { Bus } from './bus';
import { Code, PsrpcError, asWireError, callNative } from './errors';
import { EV, native, type Box, type NativeError } from './native';
import { AsyncQueue } from './queue';
import { Method, Service, type ServiceLike } from './service';
import { Stream } from './stream';
import type { Context } from './server';
import type { MethodName, RequestOf, ResponseOf } from './types';
import {
  checkInterceptors, nativeRetries, runBeforeSend, runOutcome,
  type CallInfo, type CallKind, type ClientInterceptor, type RetryOptions,
} from './hooks';
import { TRACEPARENT, TRACESTATE, TraceContext } from './trace';

export interface ClientOptions {
  /** Default request timeout (ms, default 3000). */
  timeoutMs?: number;
  /** Default affinity selection timeout (ms, default 1000). */
  selectionTimeoutMs?: number;
  /** Client id on the wire ([A-Za-z0-9_.-]+); default "CLI_" + 12 random characters. */
  clientId?: string;
  /** Interceptors of every call, in order (more: `client.addInterceptor`). */
  interceptors?: ClientInterceptor[];
  /** Retry policy of unary calls (and stream opens, if it says so); `client.setRetries` changes it. */
  retries?: RetryOptions;
}

export interface Claim {
  serverId: string;
  affinity: number;
}

export interface SelectionOptions {
  /** > 0: claims below are ineligible. */
  minimumAffinity?: number;
  /** > 0: an eligible claim at least this high is taken at once. */
  maximumAffinity?: number;
  acceptFirstAvailable?: boolean;
  /** Selection deadline (ms; 0 = none). */
  affinityTimeoutMs?: number;
  /** After the first eligible claim (ms; 0 = none). */
  shortCircuitTimeoutMs?: number;
  /** Chooses among the claims (may be async): return a server id, or throw a PsrpcError to fail the call. */
  select?: (claims: Claim[]) => string | Promise<string>;
}

export type Metadata = Record<string, string> | Map<string, string> | Iterable<readonly [string, string]>;

/** A deadline: a Date, Unix milliseconds, a BigInt of Unix nanoseconds, or a handler's ctx. */
export type Deadline = Date | number | bigint | Pick<Context, 'deadlineNs'>;

export interface CallOptions {
  timeoutMs?: number;
  topics?: string | string[];
  metadata?: Metadata;
  selection?: SelectionOptions;
  /** Cancels the call (it fails with canceled). */
  signal?: AbortSignal;
  /** Wait for a disconnected bus (within the deadline) instead of failing at once. */
  waitForReady?: boolean;
  /** Absolute deadline; pass a handler's ctx so a nested call never outlives its parent. */
  deadline?: Deadline;
  /** A W3C trace context to send (traceparent/tracestate metadata, replacing any). */
  trace?: TraceContext;
}

export interface MultiResult<R> {
  response?: R;
  error?: PsrpcError;
  serverId?: string;
}

export interface SubscribeOptions {
  topics?: string | string[];
}

export interface StreamOptions extends Omit<CallOptions, 'signal'> {
  signal?: AbortSignal;
}

/** @internal */
export function topicList(t: unknown): string[] {
  if (t === undefined || t === null) return [];
  if (typeof t === 'string') return [t];
  if (!Array.isArray(t)) throw new TypeError('topics must be a string or an array of strings');
  for (const x of t) if (typeof x !== 'string') throw new TypeError('topics must be strings');
  return t as string[];
}

function metadataList(md: unknown): [string, string][] | undefined {
  if (md === undefined || md === null) return undefined;
  if (typeof md !== 'object') throw new TypeError('metadata must be an object, a Map or [key, value] pairs');
  const entries: Iterable<readonly [unknown, unknown]> =
    md instanceof Map || Symbol.iterator in (md as object) ? (md as Iterable<readonly [unknown, unknown]>) : Object.entries(md as object);
  const out: [string, string][] = [];
  for (const e of entries) {
    if (!Array.isArray(e) || e.length !== 2) throw new TypeError('metadata entries must be [key, value] pairs');
    const [k, v] = e;
    if (typeof k !== 'string' || typeof v !== 'string') throw new TypeError('metadata keys and values must be strings');
    out.push([k, v]);
  }
  return out;
}

function deadlineNs(d: unknown): bigint | undefined {
  if (d === undefined || d === null) return undefined;
  if (typeof d === 'bigint') return d;
  if (typeof d === 'number') {
    if (!Number.isFinite(d)) throw new TypeError('deadline must be finite');
    return BigInt(Math.round(d)) * 1000000n;
  }
  if (d instanceof Date) return BigInt(d.getTime()) * 1000000n;
  if (typeof d === 'object' && typeof (d as any).deadlineNs === 'bigint') return (d as any).deadlineNs;
  throw new TypeError('deadline must be a Date, Unix milliseconds, a BigInt of nanoseconds or a handler context');
}

function nonNegative(v: unknown, what: string): number | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'number' || !(v >= 0) || !Number.isFinite(v)) throw new TypeError(`${what} must be a non-negative number`);
  return v;
}

/** @internal The native call options; validates (TypeError). */
export function nativeCallOptions(o: CallOptions | undefined): { opts: object; select?: SelectionOptions['select'] } {
  if (o === undefined) return { opts: {} };
  if (o === null || typeof o !== 'object') throw new TypeError('options must be an object');
  const opts: any = {};
  opts.timeoutMs = nonNegative(o.timeoutMs, 'timeoutMs');
  opts.topics = topicList(o.topics);
  opts.metadata = metadataList(o.metadata);
  if (o.trace !== undefined) {
    if (!(o.trace instanceof TraceContext)) throw new TypeError('trace must be a TraceContext');
    opts.metadata = [...(opts.metadata ?? []).filter(([k]: [string, string]) => k !== TRACEPARENT && k !== TRACESTATE), ...o.trace.toMetadata()];
  }
  opts.deadlineNs = deadlineNs(o.deadline);
  opts.waitForReady = !!o.waitForReady;
  let select: SelectionOptions['select'];
  if (o.selection !== undefined) {
    const s = o.selection;
    if (s === null || typeof s !== 'object') throw new TypeError('selection must be an object');
    if (s.select !== undefined && typeof s.select !== 'function') throw new TypeError('selection.select must be a function');
    select = s.select;
    opts.selection = {
      minimumAffinity: s.minimumAffinity ?? 0,
      maximumAffinity: s.maximumAffinity ?? 0,
      acceptFirstAvailable: !!s.acceptFirstAvailable,
      affinityTimeoutMs: nonNegative(s.affinityTimeoutMs, 'affinityTimeoutMs') ?? 0,
      shortCircuitTimeoutMs: nonNegative(s.shortCircuitTimeoutMs, 'shortCircuitTimeoutMs') ?? 0,
      select: !!select,
    };
  }
  if (o.signal !== undefined && !(o.signal instanceof AbortSignal)) throw new TypeError('signal must be an AbortSignal');
  return { opts, select };
}

function abortError(signal: AbortSignal): PsrpcError {
  const r = signal.reason;
  return new PsrpcError(Code.Canceled, 'request canceled', r !== undefined ? { cause: r } : {});
}

/**
 * A client of one service on a bus.
 *
 *     const client = new Client(bus, Counter);        // a protoc-gen-es GenService
 *     const res = await client.call('AddValue', { increment: 2 });
 */
export class Client<S extends ServiceLike = ServiceLike> {
  readonly bus: Bus;
  readonly service: Service;
  readonly id: string;
  /** @internal */ _box: Box;
  /** @internal open subscriptions: ended when the client closes */
  readonly _subs = new Set<Subscription<any>>();
  private readonly _interceptors: ClientInterceptor[];
  private _closing: Promise<void> | undefined;

  constructor(bus: Bus, service: S, options: ClientOptions = {}) {
    if (!bus || typeof (bus as any)._checkOpen !== 'function') throw new TypeError('bus must be a Bus');
    if (options === null || typeof options !== 'object') throw new TypeError('options must be an object');
    this.bus = bus;
    this.service = Service.from(service);
    bus._checkOpen();
    const opts = {
      timeoutMs: nonNegative(options.timeoutMs, 'timeoutMs'),
      selectionTimeoutMs: nonNegative(options.selectionTimeoutMs, 'selectionTimeoutMs'),
      clientId: options.clientId,
    };
    if (opts.clientId !== undefined && typeof opts.clientId !== 'string') throw new TypeError('clientId must be a string');
    this._interceptors = checkInterceptors(options.interceptors, 'interceptors');
    const retries = nativeRetries(options.retries);
    [this._box, this.id] = callNative(() => native.ClientCreate(bus._box, this.service.name, opts));
    if (retries) callNative(() => native.ClientSetRetries(this._box, retries));
  }

  /** Adds an interceptor after the others (for the calls started from now on). */
  addInterceptor(interceptor: ClientInterceptor): this {
    this._interceptors.push(...checkInterceptors([interceptor], 'interceptor'));
    return this;
  }

  /** Sets (or, with null, clears) the retry policy of the calls started from now on. */
  setRetries(retries: RetryOptions | null): void {
    const r = nativeRetries(retries);
    callNative(() => native.ClientSetRetries(this._box, r));
  }

  /** @internal the interceptors' view of a call; runs their beforeSend (throws to fail the call) */
  private _intercept(kind: CallKind, m: Method, opts: any): CallInfo | undefined {
    if (this._interceptors.length === 0) return undefined;
    const info: CallInfo = {
      kind, role: 'client', service: this.service.name, method: m.name, topics: opts.topics ?? [], clientId: this.id,
      deadlineNs: opts.deadlineNs,
    };
    opts.metadata = runBeforeSend(this._interceptors, info, opts.metadata);
    return info;
  }

  /** @internal */
  private _infoFor(kind: CallKind, m: Method, opts: any): CallInfo {
    return { kind, role: 'client', service: this.service.name, method: m.name, topics: opts.topics ?? [], clientId: this.id, deadlineNs: opts.deadlineNs };
  }

  /** @internal */
  private _outcome(info: CallInfo | undefined, t0: number, o: { error?: PsrpcError; serverId?: string; attempts?: number; responses?: number; errors?: number }): void {
    if (!info) return;
    runOutcome(this._interceptors, info, { durationMs: performance.now() - t0, attempts: 1, ...o });
  }

  private _method(name: unknown, kind: Method['kind'][]): Method {
    if (this._closing) throw new PsrpcError(Code.Canceled, 'client is closed');
    const m = this.service.method(name as string);
    if (!kind.includes(m.kind))
      throw new TypeError(`${m.name} is a ${m.kind} method; use ${
        { unary: 'call', multi: 'multiCall', subscription: 'subscribe', stream: 'openStream' }[m.kind]}()`);
    return m;
  }

  /** A unary call (queue or affinity method). */
  call<N extends MethodName<S>>(method: N, request: RequestOf<S, N>, options?: CallOptions): Promise<ResponseOf<S, N>> {
    let m: Method, data: Uint8Array, o: ReturnType<typeof nativeCallOptions>;
    try {
      m = this._method(method, ['unary']);
      data = m.encodeRequest(request);
      o = nativeCallOptions(options);
    } catch (e) {
      return Promise.reject(e);
    }
    const signal = options?.signal;
    if (signal?.aborted) return Promise.reject(abortError(signal));
    const bus = this.bus;
    const t0 = performance.now();
    let info: CallInfo | undefined;
    try {
      info = this._intercept('unary', m, o.opts);
    } catch (e) {
      const err = e as PsrpcError;
      this._outcome(this._infoFor('unary', m, o.opts), t0, { error: err, attempts: 0 });
      return Promise.reject(err);
    }
    return new Promise((resolve, reject) => {
      let callId = -1;
      let onAbort: (() => void) | undefined;
      const id = bus._newId((kind, a, b, c, d) => {
        if (kind === EV.SELECT) return runSelect(o.select!, a, b);
        bus._release(id);
        if (onAbort) signal!.removeEventListener('abort', onAbort);
        if (kind === -1) {
          const e = new PsrpcError(Code.Canceled, 'bus is closed');
          this._outcome(info, t0, { error: e });
          return reject(e);
        }
        const err = b as NativeError | null;
        const attempts = typeof d === 'number' ? d : 1;
        if (err) {
          const e = err.code === Code.Canceled && signal?.aborted ? abortError(signal) : PsrpcError.fromNative(err, c);
          this._outcome(info, t0, { error: e, serverId: c ?? undefined, attempts });
          return reject(e);
        }
        this._outcome(info, t0, { serverId: c ?? undefined, attempts });
        try {
          resolve(m.decodeResponse(a as Uint8Array));
        } catch (e) {
          reject(e);
        }
        return undefined;
      });
      bus._hold();
      try {
        callId = callNative(() => native.ClientCall(this._box, m.native, data, o.opts, id, false));
      } catch (e) {
        bus._release(id);
        return reject(e);
      }
      if (signal) {
        onAbort = () => native.ClientCancel(this._box, callId);
        signal.addEventListener('abort', onAbort, { once: true });
      }
    });
  }

  /**
   * A multi call (MULTI method): every server's answer as it arrives, until
   * the timeout ends the collection. `break` cancels it.
   */
  multiCall<N extends MethodName<S>>(method: N, request: RequestOf<S, N>, options?: CallOptions): AsyncIterableIterator<MultiResult<ResponseOf<S, N>>> {
    const m = this._method(method, ['multi']);
    const data = m.encodeRequest(request);
    const o = nativeCallOptions(options);
    const signal = options?.signal;
    if (signal?.aborted) throw abortError(signal);
    const bus = this.bus;
    const t0 = performance.now();
    let info: CallInfo | undefined;
    try {
      info = this._intercept('multi', m, o.opts);
    } catch (e) {
      this._outcome(this._infoFor('multi', m, o.opts), t0, { error: e as PsrpcError, attempts: 0 });
      throw e;
    }
    let responses = 0, errors = 0;
    let callId = -1;
    let finished = false;
    let onAbort: (() => void) | undefined;
    const queue = new AsyncQueue<MultiResult<ResponseOf<S, N>>>(() => {
      if (!finished) native.ClientCancel(this._box, callId);
    });
    const id = bus._newId((kind, a, b, c) => {
      if (kind === EV.SELECT) return runSelect(o.select!, a, b);
      if (kind === EV.RESULT) {
        const err = b as NativeError | null;
        if (err) errors++;
        else responses++;
        if (err) queue.push({ error: PsrpcError.fromNative(err, c), serverId: c ?? undefined });
        else {
          try {
            queue.push({ response: m.decodeResponse(a as Uint8Array), serverId: c ?? undefined });
          } catch (e) {
            queue.push({ error: e as PsrpcError, serverId: c ?? undefined });
          }
        }
        return undefined;
      }
      // EV_DONE or the bus closed
      finished = true;
      bus._release(id);
      if (onAbort) signal!.removeEventListener('abort', onAbort);
      const err = kind === -1 ? { code: Code.Canceled, message: 'bus is closed', status: -1, details: [] } : (a as NativeError | null);
      this._outcome(info, t0, { error: err ? PsrpcError.fromNative(err) : undefined, responses, errors });
      if (!err) queue.end();
      else if (err.code === Code.Canceled && signal?.aborted) queue.end(abortError(signal));
      else queue.end(PsrpcError.fromNative(err));
      return undefined;
    });
    bus._hold();
    try {
      callId = callNative(() => native.ClientCall(this._box, m.native, data, o.opts, id, true));
    } catch (e) {
      bus._release(id);
      throw e;
    }
    if (signal) {
      onAbort = () => native.ClientCancel(this._box, callId);
      signal.addEventListener('abort', onAbort, { once: true });
    }
    return queue;
  }

  /**
   * Subscribes to a subscription method: an async iterable of the published
   * messages. `break` (or `sub.close()`) unsubscribes. `await sub.ready`
   * resolves once the broker confirmed the subscription.
   */
  subscribe<N extends MethodName<S>>(method: N, options: SubscribeOptions = {}): Subscription<ResponseOf<S, N>> {
    const m = this._method(method, ['subscription']);
    if (options === null || typeof options !== 'object') throw new TypeError('options must be an object');
    return new Subscription<ResponseOf<S, N>>(this, m, topicList(options.topics));
  }

  /** Opens a stream to one server of a stream method; resolves once a server accepted it. */
  async openStream<N extends MethodName<S>>(method: N, options?: StreamOptions): Promise<Stream<ResponseOf<S, N>, RequestOf<S, N>>> {
    const m = this._method(method, ['stream']);
    const o = nativeCallOptions(options);
    const signal = options?.signal;
    if (signal?.aborted) throw abortError(signal);
    const bus = this.bus;
    const t0 = performance.now();
    let info: CallInfo | undefined;
    try {
      info = this._intercept('stream', m, o.opts);
    } catch (e) {
      this._outcome(this._infoFor('stream', m, o.opts), t0, { error: e as PsrpcError, attempts: 0 });
      throw e;
    }
    const id = bus._newId(() => undefined);
    const stream = new Stream<ResponseOf<S, N>, RequestOf<S, N>>(bus, id, '', (x) => m.encodeRequest(x), (b) => m.decodeResponse(b));
    const opened = new Promise<void>((resolve, reject) => {
      stream._onOpen = (e) => {
        const err = e ? PsrpcError.fromNative(e) : undefined;
        this._outcome(info, t0, { error: err });
        return err ? reject(err) : resolve();
      };
    });
    try {
      stream._box = callNative(() => native.ClientOpenStream(this._box, m.native, o.opts, id));
    } catch (e) {
      stream._event(-1, undefined);
      opened.catch(() => undefined);
      throw e;
    }
    let onAbort: (() => void) | undefined;
    if (signal) {
      onAbort = () => stream.close(new PsrpcError(Code.Canceled, 'request canceled'));
      signal.addEventListener('abort', onAbort, { once: true });
      stream.closed.then(() => signal.removeEventListener('abort', onAbort!));
    }
    await opened;
    return stream;
  }

  /** Closes the client: outstanding calls fail with canceled "client is closed". */
  close(): Promise<void> {
    if (this._closing) return this._closing;
    const bus = this.bus;
    this._closing = new Promise<void>((resolve) => {
      if (bus.closed) return resolve();
      const id = bus._newId(() => {
        bus._release(id);
        resolve();
      });
      bus._hold();
      // libpsrpc closes the client's subscriptions with it
      for (const sub of [...this._subs]) sub.close();
      try {
        native.ClientClose(this._box, id);
      } catch {
        bus._release(id);
        resolve();
      }
    });
    return this._closing;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

function runSelect(select: NonNullable<SelectionOptions['select']>, box: Box, claims: Claim[]): void {
  Promise.resolve()
    .then(() => select(claims))
    .then(
      (id) => {
        if (typeof id !== 'string') throw new TypeError('select must return a server id (string)');
        native.SelectionChoose(box, id);
      },
    )
    .catch((e) => {
      const w = asWireError(e);
      try {
        native.SelectionFail(box, w.code, w.message);
      } catch {
        /* answered */
      }
    });
}

/** A subscription: `for await (const msg of sub)`; `break` or `close()` unsubscribes. */
export class Subscription<T> implements AsyncIterable<T> {
  /** Resolves once the broker confirmed the subscription. */
  readonly ready: Promise<void>;
  private readonly queue: AsyncQueue<T>;
  private readonly bus: Bus;
  private readonly client: Client<any>;
  private readonly id: number;
  private _box: Box | undefined;
  private readonly _busHold: BusHold;

  /** @internal */
  constructor(client: Client<any>, m: Method, topics: string[]) {
    const bus = (this.bus = client.bus);
    this._busHold = new BusHold(bus);
    this.client = client;
    client._subs.add(this);
    let readyResolve!: () => void, readyReject!: (e: unknown) => void;
    this.ready = new Promise((res, rej) => ((readyResolve = res), (readyReject = rej)));
    this.ready.catch(() => undefined);
    this.queue = new AsyncQueue<T>(() => this._close());
    this.id = bus._newId((kind, a) => {
      switch (kind) {
        case EV.SUB_MSG:
          try {
            this.queue.push(m.decodeResponse(a as Uint8Array));
          } catch {
            /* a message of another type: dropped */
          }
          return undefined;
        case EV.READY:
          if (a) {
            const e = PsrpcError.fromNative(a as NativeError);
            readyReject(e);
            this.queue.end(e);
            this._close();
          } else readyResolve();
          return undefined;
        case -1:
          readyReject(new PsrpcError(Code.Canceled, 'bus is closed'));
          this.queue.end();
          this._close();
          return undefined;
      }
      return undefined;
    });
    this._busHold.take();
    try {
      this._box = callNative(() => native.ClientSubscribe(client._box, m.native, topics, this.id));
    } catch (e) {
      this._close();
      throw e;
    }
  }

  private _close(): void {
    this.client._subs.delete(this);
    this._busHold.release();
    this.bus._targets.delete(this.id);
    const box = this._box;
    this._box = undefined;
    if (box) native.SubClose(box);
    this.queue.end();
  }

  /** Unsubscribes; a pending iteration ends. */
  close(): void {
    this._close();
  }

  /** Do not keep the process alive for this subscription. */
  unref(): this {
    this._busHold.setRef(false, false);
    return this;
  }

  ref(): this {
    this._busHold.setRef(true, this._box !== undefined);
    return this;
  }

  [Symbol.asyncIterator](): AsyncIterableIterator<T> {
    return this.queue;
  }
}
