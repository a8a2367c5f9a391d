// PsrpcError and the psrpc error codes.
import { create } from '@bufbuild/protobuf';
import { AnySchema, type Any } from '@bufbuild/protobuf/wkt';
import type { NativeError } from './native';

/** The psrpc error codes, as they travel on the wire (livekit/psrpc's ErrorCode). */
export enum Code {
  OK = '',
  Canceled = 'canceled',
  Unknown = 'unknown',
  InvalidArgument = 'invalid_argument',
  MalformedRequest = 'malformed_request',
  DeadlineExceeded = 'deadline_exceeded',
  NotFound = 'not_found',
  AlreadyExists = 'already_exists',
  PermissionDenied = 'permission_denied',
  ResourceExhausted = 'resource_exhausted',
  FailedPrecondition = 'failed_precondition',
  Aborted = 'aborted',
  OutOfRange = 'out_of_range',
  Unimplemented = 'unimplemented',
  Internal = 'internal',
  MalformedResult = 'malformed_result',
  Unavailable = 'unavailable',
  DataLoss = 'data_loss',
  Unauthenticated = 'unauthenticated',
  NotAcceptable = 'not_acceptable',
  UnprocessableEntity = 'unprocessable_entity',
  UpstreamServerError = 'upstream_server_error',
  UpstreamClientError = 'upstream_client_error',
}

export interface PsrpcErrorOptions {
  /** google.protobuf.Any values carried with the error. */
  details?: Iterable<{ typeUrl: string; value: Uint8Array }>;
  /** The server that answered, when known. */
  serverId?: string;
  cause?: unknown;
}

/**
 * A psrpc error: `code` is the wire code string exactly as received (one of
 * `Code`, or any other string a peer sent), `details` its google.protobuf.Any
 * values. Thrown by calls, streams and subscriptions; thrown by a handler, it
 * answers the call with its code, message and details.
 */
export class PsrpcError extends Error {
  readonly code: string;
  readonly details: Any[];
  readonly serverId: string | undefined;

  constructor(code: Code | string, message?: string, options: PsrpcErrorOptions = {}) {
    super(message ?? '', options.cause !== undefined ? { cause: options.cause } : undefined);
    if (typeof code !== 'string') throw new TypeError('PsrpcError code must be a string');
    this.name = 'PsrpcError';
    this.code = code;
    this.details = [];
    for (const d of options.details ?? []) {
      if (!d || typeof d.typeUrl !== 'string' || !(d.value instanceof Uint8Array))
        throw new TypeError('PsrpcError details must be google.protobuf.Any values ({typeUrl, value})');
      this.details.push(create(AnySchema, { typeUrl: d.typeUrl, value: d.value }));
    }
    this.serverId = options.serverId;
  }

  override toString(): string {
    return `PsrpcError [${this.code}]: ${this.message}`;
  }

  /** @internal */
  static fromNative(e: NativeError, serverId?: string | null): PsrpcError {
    return new PsrpcError(e.code, e.message, { details: e.details, serverId: serverId ?? undefined });
  }
}

/** A native exception (thrown by the addon) as a PsrpcError; TypeErrors pass. */
export function convertNativeError(e: unknown): unknown {
  if (e instanceof TypeError || e instanceof PsrpcError) return e;
  if (e instanceof Error && typeof (e as any).psrpcCode === 'string') {
    return new PsrpcError((e as any).psrpcCode, e.message);
  }
  return e;
}

export function callNative<T>(f: () => T): T {
  try {
    return f();
  } catch (e) {
    throw convertNativeError(e);
  }
}

/** The error a handler's throw answers with. */
export function asWireError(e: unknown): PsrpcError {
  if (e instanceof PsrpcError) return e;
  const msg = e instanceof Error ? e.message : String(e);
  return new PsrpcError(Code.Unknown, msg || 'unknown error', { cause: e });
}
