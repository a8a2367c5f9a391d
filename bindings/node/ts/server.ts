// Server: handlers (async functions), affinity, stream handlers, publishing.
import { BusHold } from './bus';
import type { Bus } from './bus';
import { Code, PsrpcError, asWireError, callNative } from './errors';
import { EV, native, type Box, type NativeError, type NativeInfo } from './native';
import { Method, Service, type ServiceLike } from './service';
import { Stream } from './stream';
import { topicList } from './client';
import type { HandlerRequestOf, HandlerResponseOf, MethodName, ResponseOf } from './types';
import { checkInterceptors, runBeforeHandle, runOutcome, type CallInfo, type ServerInterceptor } from './hooks';
import { TraceContext } from './trace';
import type { CallOptions } from './client';

export interface ServerOptions {
  /** Server id on the wire ([A-Za-z_][A-Za-z0-9_]*); default "SRV_" + 12 random characters. */
  serverId?: string;
  /** Answer queue requests with an announcement instead of a claim (livekit/psrpc's WithServerSkipClaim). */
  skipClaim?: boolean;
  /** Server stream timeout (ms, default 3000). */
  timeoutMs?: number;
  /** Interceptors of every request, in order (more: `server.addInterceptor`). */
  interceptors?: ServerInterceptor[];
}

export interface HandleOptions<Req = any> {
  topics?: string | string[];
  /** Affinity of this server for a request (claim methods); negative declines. May be async. */
  affinity?: (request: Req, ctx: Context) => number | Promise<number>;
}

/** What a handler knows about the request it serves. */
export class Context {
  readonly requestId: string;
  readonly method: string;
  /** The caller's client id. */
  readonly clientId: string;
  /** The request's metadata (the first value of each key). */
  readonly metadata: Readonly<Record<string, string>>;
  /** Every metadata pair, in order. */
  readonly metadataEntries: readonly (readonly [string, string])[];
  readonly topics: readonly string[];
  /** The request's deadline: Unix nanoseconds. Pass `deadline: ctx` to nested calls. */
  readonly deadlineNs: bigint;
  /** Fires at the deadline (and when a forced close abandons the request). */
  readonly signal: AbortSignal;
  readonly server: Server<any>;
  /** @internal */ readonly _ac: AbortController;
  private _timer: NodeJS.Timeout | undefined;

  /** @internal */
  constructor(server: Server<any>, info: NativeInfo, topics?: readonly string[]) {
    this.server = server;
    this.requestId = info.requestId;
    this.method = info.method;
    this.clientId = info.clientId;
    this.metadataEntries = info.metadata;
    const md: Record<string, string> = Object.create(null);
    for (const [k, v] of info.metadata) if (!(k in md)) md[k] = v;
    this.metadata = md;
    this.topics = topics ?? info.topics;
    this.deadlineNs = info.expiryNs;
    this._ac = new AbortController();
    this.signal = this._ac.signal;
    if (info.expiryNs > 0n) {
      const ms = Number(info.expiryNs / 1000000n) - Date.now();
      if (ms <= 0) this._ac.abort(new PsrpcError(Code.DeadlineExceeded, 'request timed out'));
      else {
        this._timer = setTimeout(() => this._ac.abort(new PsrpcError(Code.DeadlineExceeded, 'request timed out')), ms);
        this._timer.unref();
      }
    }
  }

  /** The W3C trace context the request carried (traceparent / tracestate metadata), if any. */
  get trace(): TraceContext | undefined {
    return TraceContext.fromMetadata(this.metadataEntries);
  }

  /**
   * Options for a nested call made while handling this request: it ends by
   * this request's deadline and continues its trace (a child of `ctx.trace`:
   * same trace id, new span id). `extra` is merged in.
   */
  callOptions(extra: CallOptions = {}): CallOptions {
    const t = this.trace;
    const o: CallOptions = { deadline: this, ...extra };
    if (t && extra.trace === undefined) o.trace = t.child();
    return o;
  }

  /** The deadline as a Date. */
  get deadline(): Date {
    return new Date(Number(this.deadlineNs / 1000000n));
  }

  /** Milliseconds left until the deadline. */
  get remainingMs(): number {
    return Number(this.deadlineNs / 1000000n) - Date.now();
  }

  /** @internal */
  _done(): void {
    if (this._timer) clearTimeout(this._timer);
    this._timer = undefined;
  }
}

export type Handler<S, N> = (request: HandlerRequestOf<S, N>, ctx: Context) => HandlerResponseOf<S, N> | Promise<HandlerResponseOf<S, N>>;
export type StreamHandler<S, N> = (stream: Stream<HandlerRequestOf<S, N>, HandlerResponseOf<S, N>>, ctx: Context) => void | Promise<void>;

interface Registration {
  id: number;
  method: Method;
  topics: string[];
}

/**
 * A server of one service on a bus.
 *
 *     const server = new Server(bus, Counter);
 *     await server.handle('AddValue', async (req, ctx) => ({ value: total += req.increment }));
 */
export class Server<S extends ServiceLike = ServiceLike> {
  readonly bus: Bus;
  readonly service: Service;
  readonly id: string;
  /** @internal */ _box: Box;
  private readonly regs = new Map<string, Registration>();
  private readonly inflight = new Set<Context>();
  private _closing: Promise<void> | undefined;
  private readonly _busHold: BusHold;
  private readonly _interceptors: ServerInterceptor[];

  constructor(bus: Bus, service: S, options: ServerOptions = {}) {
    if (!bus || typeof (bus as any)._checkOpen !== 'function') throw new TypeError('bus must be a Bus');
    if (options === null || typeof options !== 'object') throw new TypeError('options must be an object');
    if (options.serverId !== undefined && typeof options.serverId !== 'string') throw new TypeError('serverId must be a string');
    this.bus = bus;
    this._busHold = new BusHold(bus);
    this._interceptors = checkInterceptors(options.interceptors, 'interceptors');
    this.service = Service.from(service);
    bus._checkOpen();
    [this._box, this.id] = callNative(() =>
      native.ServerCreate(bus._box, this.service.name, {
        serverId: options.serverId,
        skipClaim: !!options.skipClaim,
        timeoutMs: options.timeoutMs ?? 0,
      }),
    );
    this._busHold.take();
  }

  /** Adds an interceptor after the others (for the requests received from now on). */
  addInterceptor(interceptor: ServerInterceptor): this {
    this._interceptors.push(...checkInterceptors([interceptor], 'interceptor'));
    return this;
  }

  /** @internal runs beforeHandle; returns the outcome reporter, or throws the rejection */
  private _intercept(kind: CallInfo['kind'], ctx: Context): ((error?: unknown) => void) | undefined {
    if (this._interceptors.length === 0) return undefined;
    const info: CallInfo = {
      kind, role: 'server', service: this.service.name, method: ctx.method, topics: ctx.topics, clientId: ctx.clientId,
      serverId: this.id, requestId: ctx.requestId, deadlineNs: ctx.deadlineNs || undefined,
    };
    const t0 = performance.now();
    let done = false;
    const report = (error?: unknown) => {
      if (done) return;
      done = true;
      runOutcome(this._interceptors, info, { durationMs: performance.now() - t0, attempts: 1, serverId: this.id, error: error === undefined ? undefined : asWireError(error) });
    };
    try {
      runBeforeHandle(this._interceptors, info, ctx.metadataEntries);
    } catch (e) {
      report(e);
      throw e;
    }
    return report;
  }

  /** Do not keep the process alive for this server. */
  unref(): this {
    this._busHold.setRef(false, false);
    return this;
  }

  ref(): this {
    this._busHold.setRef(true, !this._closing);
    return this;
  }

  /**
   * Serves a method: unary and multi methods with `handler(request, ctx)`
   * (async allowed) returning the response; stream methods with
   * `handler(stream, ctx)` (the stream closes when it returns; a throw closes
   * it with that error). Resolves once the broker confirmed the registration.
   */
  handle<N extends MethodName<S>>(method: N, handler: Handler<S, N>, options?: HandleOptions<HandlerRequestOf<S, N>>): Promise<void> {
    return this._handle(method, handler, options ?? {}, false);
  }

  /**
   * Serves a stream method: `handler(stream, ctx)` (async allowed); the
   * stream closes when it returns, with the error it throws. (`handle` does
   * the same for a stream method; this spelling gives TypeScript the stream's
   * message types.)
   */
  handleStream<N extends MethodName<S>>(
    method: N,
    handler: StreamHandler<S, N>,
    options?: HandleOptions<undefined>,
  ): Promise<void> {
    return this._handle(method, handler, options ?? {}, true);
  }

  private _handle(method: unknown, handler: unknown, options: HandleOptions<any>, streamOnly: boolean): Promise<void> {
    try {
      if (this._closing) throw new PsrpcError(Code.Canceled, 'server is closed');
      if (typeof handler !== 'function') throw new TypeError('handler must be a function');
      if (options === null || typeof options !== 'object') throw new TypeError('options must be an object');
      if (options.affinity !== undefined && typeof options.affinity !== 'function') throw new TypeError('affinity must be a function');
      const m = this.service.method(method as string);
      if (m.subscription) throw new TypeError(`${m.name} is a subscription method: use publish()`);
      if (streamOnly && !m.stream) throw new TypeError(`${m.name} is not a stream method: use handle()`);
      const topics = topicList(options.topics);
      const key = regKey(m.name, topics);
      if (this.regs.has(key)) throw new PsrpcError(Code.AlreadyExists, `${m.name} is already registered under these topics`);
      const affinity = options.affinity;
      return new Promise<void>((resolve, reject) => {
        let ready = false;
        const id = this.bus._newId((kind, a, b, c) => {
          switch (kind) {
            case EV.READY:
              ready = true;
              if (a) {
                this.regs.delete(key);
                this.bus._targets.delete(id);
                reject(PsrpcError.fromNative(a as NativeError));
              } else resolve();
              return undefined;
            case EV.REQ:
              this._request(m, handler as Handler<S, any>, a as Box, b as NativeInfo, c as Uint8Array);
              return undefined;
            case EV.AFF:
              this._affinity(m, affinity!, a as Box, b as NativeInfo, c as Uint8Array);
              return undefined;
            case EV.ST_ACCEPT:
              this._accept(m, handler as StreamHandler<S, any>, a as number, b as Box, c as NativeInfo, topics);
              return undefined;
            case -1:
              if (!ready) reject(new PsrpcError(Code.Canceled, 'bus is closed'));
              return undefined;
          }
          return undefined;
        });
        try {
          callNative(() => native.ServerRegister(this._box, m.native, topics, id, !!affinity, m.stream));
        } catch (e) {
          this.bus._targets.delete(id);
          throw e;
        }
        this.regs.set(key, { id, method: m, topics });
      });
    } catch (e) {
      return Promise.reject(e);
    }
  }

  /** Stops serving a method (under topics). */
  unhandle(method: MethodName<S>, options: { topics?: string | string[] } = {}): void {
    const m = this.service.method(method as string);
    const topics = topicList(options.topics);
    const key = regKey(m.name, topics);
    callNative(() => native.ServerDeregister(this._box, m.name, topics));
    this.regs.delete(key);
  }

  /** Publishes a message on a subscription method (fire and forget, as in Go). */
  publish<N extends MethodName<S>>(method: N, message: HandlerResponseOf<S, N> | ResponseOf<S, N>, options: { topics?: string | string[] } = {}): void {
    if (this._closing) throw new PsrpcError(Code.Canceled, 'server is closed');
    const m = this.service.method(method as string);
    if (!m.subscription) throw new TypeError(`${m.name} is not a subscription method`);
    if (options === null || typeof options !== 'object') throw new TypeError('options must be an object');
    const data = m.encodeResponse(message);
    callNative(() => native.ServerPublish(this._box, m.native, topicList(options.topics), data));
  }

  /**
   * Closes the server: stops receiving, waits for requests being handled
   * (unless force: their answers are then discarded and their ctx.signal
   * aborts), then resolves.
   */
  close(options: { force?: boolean } = {}): Promise<void> {
    const force = !!options?.force;
    if (this._closing && !force) return this._closing;
    const bus = this.bus;
    if (force) for (const ctx of this.inflight) ctx._ac.abort(new PsrpcError(Code.Canceled, 'server is closed'));
    const p = new Promise<void>((resolve) => {
      if (bus.closed) return resolve();
      const id = bus._newId(() => {
        bus._release(id);
        resolve();
      });
      bus._hold();
      try {
        native.ServerClose(this._box, force, id);
      } catch {
        bus._release(id);
        resolve();
      }
    });
    const prev = this._closing;
    this._closing = prev ? Promise.all([prev, p]).then(() => undefined) : p;
    this._closing.then(() => {
      for (const r of this.regs.values()) bus._targets.delete(r.id);
      this.regs.clear();
    });
    this._busHold.release();
    return this._closing;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  private _request(m: Method, handler: Handler<S, any>, box: Box, info: NativeInfo, payload: Uint8Array): void {
    const ctx = new Context(this, info);
    this.inflight.add(ctx);
    let req: any;
    let report: ((error?: unknown) => void) | undefined;
    const finish = (error?: unknown) => {
      ctx._done();
      this.inflight.delete(ctx);
      if (report) report(error);
    };
    const failed = (e: unknown) => {
      fail(box, e);
      finish(e);
    };
    try {
      report = this._intercept(m.kind === 'multi' ? 'multi' : 'unary', ctx);
    } catch (e) {
      fail(box, e);
      ctx._done();
      this.inflight.delete(ctx);
      return;
    }
    try {
      req = m.decodeRequest(payload);
    } catch (e) {
      failed(e);
      return;
    }
    let result: unknown;
    try {
      result = handler(req, ctx);
    } catch (e) {
      failed(e);
      return;
    }
    if (result instanceof Promise || (result && typeof (result as any).then === 'function')) {
      Promise.resolve(result).then(
        (res) => finish(respond(m, box, res)),
        (e) => failed(e),
      );
    } else {
      finish(respond(m, box, result));
    }
  }

  private _affinity(m: Method, affinity: NonNullable<HandleOptions['affinity']>, box: Box, info: NativeInfo, payload: Uint8Array): void {
    const ctx = new Context(this, info);
    let req: unknown;
    if (!m.stream) {
      try {
        req = m.decodeRequest(payload);
      } catch {
        // An undecodable request: claim as a server without an affinity
        // function would (1.0); if chosen, the handler stage answers it with
        // malformed_request (as Go does after selection).
        native.RequestClaim(box, 1);
        ctx._done();
        return;
      }
    }
    Promise.resolve()
      .then(() => affinity(req, ctx))
      .then(
        (a) => native.RequestClaim(box, typeof a === 'number' ? a : -1),
        () => native.RequestClaim(box, -1),
      )
      .catch(() => undefined)
      .finally(() => ctx._done());
  }

  private _accept(m: Method, handler: StreamHandler<S, any>, streamId: number, box: Box, info: NativeInfo, topics: string[]): void {
    const stream = new Stream<any, any>(this.bus, streamId, info.requestId, (x) => m.encodeResponse(x), (b) => m.decodeRequest(b));
    stream._box = box;
    const ctx = new Context(this, { ...info, topics, expiryNs: 0n, sentAtNs: 0n }, topics);
    let report: ((error?: unknown) => void) | undefined;
    try {
      report = this._intercept('stream', ctx);
    } catch (e) {
      stream.close(asWireError(e));
      ctx._done();
      return;
    }
    stream.closed.then(() => {
      ctx._ac.abort(stream.closeCause ?? new PsrpcError(Code.Canceled, 'stream closed'));
      if (report) report(stream.closeCause ?? undefined);
    });
    Promise.resolve()
      .then(() => handler(stream, ctx))
      .then(
        () => stream.close(),
        (e) => stream.close(asWireError(e)),
      );
  }
}

function regKey(name: string, topics: string[]): string {
  return JSON.stringify([name, topics]);
}

/** Answers; returns the error it answered with instead (an unencodable response), if any. */
function respond(m: Method, box: Box, res: unknown): PsrpcError | undefined {
  let data: Uint8Array;
  try {
    data = m.encodeResponse(res);
  } catch (e) {
    const err = e instanceof PsrpcError ? e : new PsrpcError(Code.MalformedResult, (e as Error).message);
    fail(box, err);
    return err;
  }
  try {
    native.RequestRespond(box, data);
  } catch {
    /* answered already */
  }
  return undefined;
}

function fail(box: Box, e: unknown): void {
  const w = asWireError(e);
  try {
    native.RequestFail(box, w.code || Code.Unknown, w.message, w.details.map((d) => ({ typeUrl: d.typeUrl, value: d.value })));
  } catch {
    /* answered already */
  }
}
