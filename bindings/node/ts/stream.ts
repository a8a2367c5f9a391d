// A bidirectional stream, client or server side.
import type { Bus } from './bus';
import { Code, PsrpcError, asWireError, callNative } from './errors';
import { EV, native, type Box, type NativeError } from './native';
import { AsyncQueue } from './queue';

export interface SendOptions {
  /** How long to wait for the peer's acknowledgement (default: the stream's timeout). */
  timeoutMs?: number;
}

/** Messages received and not yet read above which new ones are refused (the peer's send fails). */
const HIGH_WATER = 100000;

function isCleanClose(e: NativeError | null): boolean {
  return !e || (e.code === Code.Canceled && e.message === 'stream closed');
}

/**
 * An open stream. `for await (const msg of stream)` receives until the stream
 * closes (cleanly: the loop ends; with an error: it throws the PsrpcError);
 * `await stream.send(msg)` resolves when the peer acknowledged the message;
 * `stream.close(error?)` ends it for both sides.
 */
export class Stream<Recv = Uint8Array, Send = Uint8Array> implements AsyncIterable<Recv> {
  /** The stream id on the wire. */
  readonly streamId: string;
  /** @internal */ _box: Box | undefined;
  private readonly bus: Bus;
  private readonly id: number;
  private readonly encode: (m: Send) => Uint8Array;
  private readonly decode: (b: Uint8Array) => Recv;
  private readonly queue: AsyncQueue<Recv>;
  private _cause: PsrpcError | undefined;
  private _closed = false;
  private readonly _closedP: Promise<PsrpcError | undefined>;
  private _closedResolve!: (e: PsrpcError | undefined) => void;
  /** @internal */ _onOpen: ((e: NativeError | null) => void) | undefined;
  /** @internal */ _onEnd: ((e: PsrpcError | undefined) => void) | undefined;

  /** @internal */
  constructor(bus: Bus, id: number, streamId: string, encode: (m: Send) => Uint8Array, decode: (b: Uint8Array) => Recv) {
    this.bus = bus;
    this.id = id;
    this.streamId = streamId;
    this.encode = encode;
    this.decode = decode;
    this.queue = new AsyncQueue<Recv>();
    this._closedP = new Promise((r) => (this._closedResolve = r));
    bus._targets.set(id, (kind, a) => this._event(kind, a));
    bus._hold();
  }

  /** Resolves when the stream ended: undefined for a clean close, else the error. */
  get closed(): Promise<PsrpcError | undefined> {
    return this._closedP;
  }

  /** Why the stream ended (undefined while open or after a clean close). */
  get closeCause(): PsrpcError | undefined {
    return this._cause;
  }

  get isClosed(): boolean {
    return this._closed;
  }

  /** Sends a message; resolves when the peer acknowledged it. */
  send(message: Send, options: SendOptions = {}): Promise<void> {
    if (this._closed || this._box === undefined)
      return Promise.reject(this._cause ?? new PsrpcError(Code.Canceled, 'stream closed'));
    let data: Uint8Array;
    try {
      data = this.encode(message);
    } catch (e) {
      return Promise.reject(e);
    }
    const timeoutMs = options.timeoutMs ?? 0;
    if (typeof timeoutMs !== 'number') return Promise.reject(new TypeError('timeoutMs must be a number'));
    return new Promise<void>((resolve, reject) => {
      const sid = this.bus._newId((kind, err: NativeError | null) => {
        this.bus._release(sid);
        if (kind === EV.SEND_DONE && !err) resolve();
        else reject(err ? PsrpcError.fromNative(err) : new PsrpcError(Code.Canceled, 'bus is closed'));
      });
      this.bus._hold();
      try {
        callNative(() => native.StreamSend(this._box!, data, timeoutMs, sid, this.bus._box));
      } catch (e) {
        this.bus._release(sid);
        reject(e);
      }
    });
  }

  /**
   * Closes the stream: without an error cleanly (the peer sees canceled
   * "stream closed"), with a PsrpcError (or any Error: unknown) the peer sees
   * that code and message. Idempotent.
   */
  close(error?: PsrpcError | Error | null): void {
    if (this._closed || this._box === undefined) return;
    let code: string | null = null;
    let message = '';
    if (error) {
      const e = asWireError(error);
      code = e.code || Code.Unknown;
      message = e.message;
    }
    try {
      callNative(() => native.StreamClose(this._box!, code, message));
    } catch {
      /* already closed */
    }
  }

  [Symbol.asyncIterator](): AsyncIterator<Recv> {
    return this.queue;
  }

  /** @internal */
  _event(kind: number, a: any): unknown {
    switch (kind) {
      case EV.ST_OPEN:
        this._onOpen?.(a as NativeError | null);
        this._onOpen = undefined;
        return undefined;
      case EV.ST_MSG: {
        let m: Recv;
        try {
          m = this.decode(a as Uint8Array);
        } catch (e) {
          this.close(e as Error);
          return false;
        }
        if (this.queue.size >= HIGH_WATER) return false;
        this.queue.push(m);
        return true;
      }
      case EV.ST_CLOSE:
        this._finish(a as NativeError | null);
        return undefined;
      case -1:
        this._finish({ status: -1, code: Code.Canceled, message: 'bus is closed', details: [] });
        return undefined;
    }
    return undefined;
  }

  private _finish(err: NativeError | null): void {
    if (this._closed) return;
    this._closed = true;
    const clean = isCleanClose(err);
    this._cause = clean ? undefined : PsrpcError.fromNative(err!);
    if (this._onOpen) {
      this._onOpen(err ?? { status: -1, code: Code.Canceled, message: 'stream closed', details: [] });
      this._onOpen = undefined;
    }
    this.queue.end(this._cause);
    this.bus._release(this.id);
    const box = this._box;
    this._box = undefined;
    if (box) native.StreamFree(box);
    this._closedResolve(this._cause);
    this._onEnd?.(this._cause);
  }
}
