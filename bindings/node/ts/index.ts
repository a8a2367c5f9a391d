// psrpc: protobuf RPC over Redis, NATS or in-process pub/sub, wire compatible
// with livekit/psrpc (Go). The native half is libpsrpc (linked statically).
export { Bus } from './bus';
export type { BusOptions, BusState, BusStats } from './bus';
export { Client, Subscription } from './client';
export type { CallOptions, ClientOptions, Claim, Deadline, Metadata, MultiResult, SelectionOptions, StreamOptions, SubscribeOptions } from './client';
export { Server, Context } from './server';
export type { Handler, HandleOptions, ServerOptions, StreamHandler } from './server';
export { Stream } from './stream';
export type { SendOptions } from './stream';
export { Code, PsrpcError } from './errors';
export type { PsrpcErrorOptions } from './errors';
export { Method, Service, camelCase, decodeOptions, psrpcOptions, OPTIONS_EXTENSION_NUMBER } from './service';
export type { MethodDef, PsrpcOptions, Routing, ServiceDef, ServiceLike } from './service';
export type { MethodName, RequestOf, ResponseOf, HandlerRequestOf, HandlerResponseOf } from './types';
export { setLogHandler } from './hooks';
export type { CallInfo, CallKind, CallOutcome, ClientInterceptor, LogHandler, LogLevel, RetryOptions, ServerInterceptor } from './hooks';
export { TraceContext, otelPropagation } from './trace';
import { native } from './native';
import { setLogHandler } from './hooks';

// Symbol.asyncDispose in the typings without requiring lib esnext.disposable
// (declared the same way as lib.esnext.disposable and @types/node do).
declare global {
  interface SymbolConstructor {
    readonly asyncDispose: unique symbol;
  }
}
const info = native.StatusInfo();
// NODE_DEBUG=psrpc: libpsrpc's log events through util.debuglog.
if (/\bpsrpc\b/i.test(process.env.NODE_DEBUG ?? '')) {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const debug = (require('node:util') as typeof import('node:util')).debuglog('psrpc');
  setLogHandler((level, component, message) => debug('%s %s: %s', level, component, message), { level: 'debug' });
}

/** libpsrpc's version. */
export const version: string = info.version;
/** The livekit/psrpc release whose wire protocol this speaks. */
export const wireVersion: string = info.wireVersion;
/** @internal Optional ABI features of the linked libpsrpc. */
export const features: Readonly<Record<string, boolean>> = info.features;

/**
 * @internal Benchmark hooks (bench/node): a C echo handler / stream acceptor
 * on a Server, and a C call loop on a Client (blocks this thread).
 */
export const _bench = {
  serve(server: { _box: object; service: { method(n: string): { native: object } } }, method: string): void {
    native.BenchServe(server._box, server.service.method(method).native as any);
  },
  runC(client: { _box: object; service: { method(n: string): { native: object } } }, method: string, payload: Uint8Array,
    inflight: number, warmupMs: number, durationMs: number): [number, number, number] {
    return native.BenchRunC(client._box, client.service.method(method).native as any, payload, inflight, warmupMs, durationMs);
  },
};
