// Bus: one connection to Redis, NATS or an in-process bus, and its loop thread.
import { EventEmitter } from 'node:events';
import { Code, PsrpcError, callNative } from './errors';
import { EV, native, type Box, type NativeError } from './native';

export interface BusOptions {
  /** Bytes; larger messages are refused (resource_exhausted). Default 1 MiB. */
  maxMessageSize?: number;
  queueCapacity?: number;
  connectTimeoutMs?: number;
  pingIntervalMs?: number;
  reconnectWaitMs?: number;
  reconnectWaitMaxMs?: number;
  /** gzip outbound payloads at least this large; 0 = never. */
  compressThreshold?: number;
  reconnectBufferSize?: number;
  tls?: boolean;
  tlsCaFile?: string;
  tlsCertFile?: string;
  tlsKeyFile?: string;
  tlsServerName?: string;
  natsCredsFile?: string;
  natsNkeySeedFile?: string;
  channelPrefix?: string;
  /** How long Bus.open waits for the first connection (ms, default 10000). */
  readyTimeoutMs?: number;
}

export type BusState = 'connecting' | 'connected' | 'disconnected' | 'closed';

export interface BusStats {
  connects: number;
  disconnects: number;
  reconnectAttempts: number;
  subscriptions: number;
  messagesPublished: number;
  messagesReceived: number;
  droppedMalformed: number;
  droppedOversize: number;
  droppedSlowConsumer: number;
  droppedExpired: number;
  droppedUnknown: number;
  requestsInFlight: number;
  streamsOpen: number;
}

/** @internal A receiver of native events for one id. */
export type Target = (kind: number, ...args: any[]) => unknown;

// Buses with something in flight (a call, an open server, subscription or
// stream) are strongly reachable from here: their pending promises and
// handlers must not be collected while the process waits for them.
const active = new Set<Bus>();

// The native side holds the dispatch function strongly (its threadsafe
// function): it must reach the bus only weakly, from a scope of its own (a
// closure created in the constructor would share the constructor's context,
// and with it `this`), so that a bus dropped without close can be collected.
function makeDispatch(weak: WeakRef<Bus>) {
  return (kind: number, id: number, a?: any, b?: any, c?: any, d?: any): unknown => {
    const bus = weak.deref();
    if (bus === undefined) return false;
    return (bus as any)._dispatch(kind, id, a, b, c, d);
  };
}

const STATES: Record<number, BusState> = { 1: 'connected', 2: 'disconnected', 3: 'closed' };

/**
 * A connection to a pub/sub bus: `local://` (in-process), `redis://host:port`,
 * `nats://host:port`. Open with `await Bus.open(url)`; close with
 * `await bus.close()` (or `await using bus = await Bus.open(...)`).
 *
 * Event loop: like net.Server, the bus keeps the process alive while it has an
 * open server or subscription, a call or a stream in flight; `unref()` lets the
 * process exit anyway. Events: 'state' (state, error?).
 */
export class Bus extends EventEmitter {
  readonly url: string;
  /** @internal */ _box: Box;
  /** @internal */ readonly _targets = new Map<number, Target>();
  private _nextId = 1;
  private _holds = 0;
  private _refed = true;
  private _state: BusState = 'connecting';
  private _lastError: PsrpcError | undefined;
  private _closing: Promise<void> | undefined;
  private _closedResolve: (() => void) | undefined;
  private readonly _closed: Promise<void>;
  private _readyWaiters: ((e?: PsrpcError) => void)[] = [];

  private constructor(url: string, options: BusOptions) {
    super();
    this.url = url;
    this._closed = new Promise((r) => (this._closedResolve = r));
    const dispatch = makeDispatch(new WeakRef(this));
    this._box = callNative(() => native.BusOpen(url, options, dispatch));
    this._updateRef();
  }

  /**
   * Opens a bus and waits until it is connected (local: at once). Rejects with
   * a PsrpcError (deadline_exceeded after readyTimeoutMs, unauthenticated, ...).
   */
  static async open(url: string = 'local://', options: BusOptions = {}): Promise<Bus> {
    if (typeof url !== 'string') throw new TypeError('url must be a string');
    if (options === null || typeof options !== 'object') throw new TypeError('options must be an object');
    const bus = new Bus(url, options);
    try {
      await bus.ready(options.readyTimeoutMs ?? 10000);
    } catch (e) {
      await bus.close();
      throw e;
    }
    return bus;
  }

  get state(): BusState {
    return this._state;
  }

  get closed(): boolean {
    return this._state === 'closed' || this._closing !== undefined;
  }

  /** Resolves once connected; rejects after timeoutMs or on a refusal by the broker. */
  ready(timeoutMs = 10000): Promise<void> {
    if (this._state === 'connected') return Promise.resolve();
    if (this.closed) return Promise.reject(new PsrpcError(Code.Canceled, 'bus is closed'));
    return new Promise((resolve, reject) => {
      this._hold();
      const timer = setTimeout(() => done(new PsrpcError(Code.DeadlineExceeded,
        `bus ${this.url} not connected after ${timeoutMs} ms` + (this._lastError ? `: ${this._lastError.message}` : ''))), timeoutMs);
      const done = (e?: PsrpcError) => {
        clearTimeout(timer);
        const i = this._readyWaiters.indexOf(done);
        if (i >= 0) this._readyWaiters.splice(i, 1);
        this._unhold();
        if (e) reject(e);
        else resolve();
      };
      this._readyWaiters.push(done);
    });
  }

  /** The bus's counters. */
  stats(): BusStats {
    return callNative(() => native.BusStats(this._box)) as unknown as BusStats;
  }

  /** Closes the bus and everything on it (outstanding calls fail with canceled). */
  close(): Promise<void> {
    if (this._closing) return this._closing;
    this._closing = (async () => {
      let started = false;
      try {
        started = native.BusClose(this._box);
      } catch {
        /* already closed */
      }
      if (started) {
        this._hold(); // until EV_CLOSED
        await this._closed;
      }
    })();
    return this._closing;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  /** Keep the process alive while this bus has work in flight (default). */
  ref(): this {
    this._refed = true;
    this._updateRef();
    return this;
  }

  /** Do not keep the process alive for this bus. */
  unref(): this {
    this._refed = false;
    this._updateRef();
    return this;
  }

  /** @internal */
  _newId(target: Target): number {
    const id = this._nextId++;
    this._targets.set(id, target);
    return id;
  }

  /** @internal */
  _hold(): void {
    if (this._holds++ === 0) {
      active.add(this);
      this._updateRef();
    }
  }

  /** @internal */
  _unhold(): void {
    if (this._holds <= 0) return;
    if (--this._holds === 0) {
      active.delete(this);
      this._updateRef();
    }
  }

  /** @internal The target ID is done: forgotten, and its hold released. */
  _release(id: number): void {
    this._targets.delete(id);
    this._unhold();
  }

  /** @internal */
  _checkOpen(): void {
    if (this.closed) throw new PsrpcError(Code.Canceled, 'bus is closed');
  }

  private _updateRef(): void {
    if (this._state === 'closed') return;
    try {
      native.BusRef(this._box, this._refed && this._holds > 0);
    } catch {
      /* closed */
    }
  }

  private _dispatch(kind: number, id: number, a: any, b: any, c: any, d: any): unknown {
    try {
      if (kind === EV.STATE) return this._onState(a as number, b as NativeError | null);
      if (kind === EV.CLOSED) return this._onClosed();
      const t = this._targets.get(id);
      if (t === undefined) return false;
      return t(kind, a, b, c, d);
    } catch (e) {
      // A bug in this layer or a throwing user callback: report it like an
      // uncaught exception, without breaking the bus.
      process.nextTick(() => {
        throw e;
      });
      return false;
    }
  }

  private _onState(state: number, err: NativeError | null): void {
    const s = STATES[state] ?? 'disconnected';
    const e = err ? PsrpcError.fromNative(err) : undefined;
    if (e) this._lastError = e;
    if (s === this._state && s !== 'disconnected') return;
    this._state = s === 'closed' ? (this._closing ? 'closed' : 'closed') : s;
    if (s === 'connected') for (const w of [...this._readyWaiters]) w();
    if (s === 'disconnected' && e && (e.code === Code.Unauthenticated || e.code === Code.PermissionDenied))
      for (const w of [...this._readyWaiters]) w(e);
    if (this.listenerCount('state') > 0) this.emit('state', s, e);
  }

  private _onClosed(): void {
    const wasClosed = this._state === 'closed';
    this._state = 'closed';
    for (const w of [...this._readyWaiters]) w(new PsrpcError(Code.Canceled, 'bus is closed'));
    this._holds = 0;
    active.delete(this);
    this._closedResolve?.();
    if (!wasClosed && this.listenerCount('state') > 0) this.emit('state', 'closed', undefined);
    // Anything still waiting on this bus (a subscription iterator, a close
    // promise) learns that it is closed.
    const targets = [...this._targets.values()];
    this._targets.clear();
    for (const t of targets) {
      try {
        t(-1);
      } catch {
        /* ignore */
      }
    }
  }
}

/**
 * @internal One object's hold on its bus (Bus._hold) for a server or a
 * subscription: taken while it is open and ref()'d, released once.
 */
export class BusHold {
  private readonly bus: Bus;
  private refed = true;
  private held = false;

  constructor(bus: Bus) {
    this.bus = bus;
  }

  /** Holds the bus unless unref()'d or already holding. */
  take(): void {
    if (!this.held && this.refed) {
      this.held = true;
      this.bus._hold();
    }
  }

  release(): void {
    if (this.held) {
      this.held = false;
      this.bus._unhold();
    }
  }

  /** The owner's ref() (ON; OPEN: it may hold now) or unref(). */
  setRef(on: boolean, open: boolean): void {
    this.refed = on;
    if (!on) this.release();
    else if (open) this.take();
  }
}
