// ES module entry: the same implementation as the CommonJS entry (one copy of
// every class in a process, whichever way it is loaded).
import cjs from '../dist/cjs/index.js';

export const {
  Bus,
  Client,
  Subscription,
  Server,
  Context,
  Stream,
  Code,
  PsrpcError,
  Method,
  Service,
  camelCase,
  decodeOptions,
  psrpcOptions,
  OPTIONS_EXTENSION_NUMBER,
  version,
  wireVersion,
  features,
  _bench,
  setLogHandler,
  TraceContext,
  otelPropagation,
} = cjs;
export default cjs;
