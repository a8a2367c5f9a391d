// Services and methods: from protoc-gen-es GenService descriptors (with
// livekit/psrpc's method options, extension 2198 of MethodOptions), or plain
// method definitions with Uint8Array messages.
import { create, fromBinary, isMessage, toBinary } from '@bufbuild/protobuf';
import type { DescMessage, DescMethod, DescService } from '@bufbuild/protobuf';
import { Code, PsrpcError } from './errors';
import type { NativeMethod } from './native';

export const OPTIONS_EXTENSION_NUMBER = 2198;

export type Routing = 'queue' | 'affinity' | 'multi';
const ROUTING: Record<Routing, number> = { queue: 0, affinity: 1, multi: 2 };
const FLAG_SUBSCRIPTION = 0x1;
const FLAG_TOPICS = 0x2;
const FLAG_STREAM = 0x4;
const FLAG_SINGLE_SERVER = 0x8;

/** The decoded psrpc.Options of a method (options.proto). */
export interface PsrpcOptions {
  subscription: boolean;
  topics: boolean;
  topicParams: { group: string; names: string[]; typed: boolean; singleServer: boolean };
  stream: boolean;
  routing: Routing;
}

/** A method by hand (plain mode), or what a descriptor says. */
export interface MethodDef {
  /** Wire name, e.g. "AddValue". */
  name: string;
  routing?: Routing;
  subscription?: boolean;
  topics?: boolean;
  stream?: boolean;
  singleServer?: boolean;
  /** Message schemas (@bufbuild/protobuf); without them messages are Uint8Array. */
  input?: DescMessage;
  output?: DescMessage;
  /** Full name of the output message; needed to publish on a subscription method. */
  outputType?: string;
}

/** A plain service: a wire name and its methods. */
export interface ServiceDef {
  name: string;
  methods: MethodDef[];
}

export type ServiceLike = DescService | ServiceDef | string;

export class Method {
  readonly name: string;
  readonly routing: Routing;
  readonly subscription: boolean;
  readonly topics: boolean;
  readonly stream: boolean;
  readonly singleServer: boolean;
  readonly input: DescMessage | undefined;
  readonly output: DescMessage | undefined;
  readonly outputType: string | undefined;
  readonly localName: string | undefined;
  /** @internal */
  readonly native: NativeMethod;

  constructor(def: MethodDef, localName?: string) {
    if (!def || typeof def.name !== 'string' || def.name === '') throw new TypeError('method name must be a non-empty string');
    const routing = def.routing ?? 'queue';
    if (!(routing in ROUTING)) throw new TypeError(`routing must be queue, affinity or multi, not ${String(routing)}`);
    this.name = def.name;
    this.routing = routing;
    this.subscription = !!def.subscription;
    this.topics = !!def.topics;
    this.stream = !!def.stream;
    this.singleServer = !!def.singleServer;
    this.input = def.input;
    this.output = def.output;
    this.outputType = def.outputType ?? def.output?.typeName;
    this.localName = localName;
    let flags = 0;
    if (this.subscription) flags |= FLAG_SUBSCRIPTION;
    if (this.topics) flags |= FLAG_TOPICS;
    if (this.stream) flags |= FLAG_STREAM;
    if (this.singleServer) flags |= FLAG_SINGLE_SERVER;
    this.native = { name: this.name, routing: ROUTING[routing], flags, outputType: this.outputType };
  }

  /** What kind of call it takes: unary, multi, subscription or stream. */
  get kind(): 'unary' | 'multi' | 'subscription' | 'stream' {
    if (this.subscription) return 'subscription';
    if (this.stream) return 'stream';
    if (this.routing === 'multi') return 'multi';
    return 'unary';
  }

  static fromDescriptor(m: DescMethod): Method {
    const opts = psrpcOptions(m);
    return new Method(
      {
        name: camelCase(m.name),
        routing: opts.routing,
        subscription: opts.subscription,
        topics: opts.topics,
        stream: opts.stream,
        singleServer: opts.topicParams.singleServer,
        input: m.input,
        output: m.output,
      },
      m.localName,
    );
  }

  /** @internal */
  encodeRequest(msg: unknown): Uint8Array {
    return encode(msg, this.input, Code.MalformedRequest, 'request');
  }
  /** @internal */
  encodeResponse(msg: unknown): Uint8Array {
    return encode(msg, this.output, Code.MalformedResult, 'response');
  }
  /** @internal */
  decodeRequest(data: Uint8Array): any {
    return decode(data, this.input, Code.MalformedRequest);
  }
  /** @internal */
  decodeResponse(data: Uint8Array): any {
    return decode(data, this.output, Code.MalformedResult);
  }
}

function encode(msg: unknown, schema: DescMessage | undefined, code: Code, what: string): Uint8Array {
  if (schema === undefined) {
    if (msg instanceof Uint8Array) return msg;
    if (msg === undefined || msg === null) return new Uint8Array(0);
    throw new TypeError(`${what} must be a Uint8Array (the method has no message schema)`);
  }
  if (msg instanceof Uint8Array) return msg;
  if (msg === undefined || msg === null) return toBinary(schema, create(schema));
  if (typeof msg !== 'object') throw new TypeError(`${what} must be a ${schema.typeName} message or its init object`);
  if (isMessage(msg)) {
    if (!isMessage(msg, schema))
      throw new TypeError(`${what} is a ${(msg as any).$typeName}, expected ${schema.typeName}`);
    return toBinary(schema, msg);
  }
  let m;
  try {
    m = create(schema, msg as any);
  } catch (e) {
    throw new TypeError(`${what} is not a valid ${schema.typeName}: ${(e as Error).message}`);
  }
  try {
    return toBinary(schema, m);
  } catch (e) {
    // a request the caller built wrong is a TypeError; a handler's bad answer malformed_result
    if (code === Code.MalformedRequest) throw new TypeError(`cannot encode ${schema.typeName}: ${(e as Error).message}`);
    throw new PsrpcError(code, `cannot encode ${schema.typeName}: ${(e as Error).message}`);
  }
}

function decode(data: Uint8Array, schema: DescMessage | undefined, code: Code): any {
  if (schema === undefined) return data;
  try {
    return fromBinary(schema, data);
  } catch (e) {
    throw new PsrpcError(code, `cannot decode ${schema.typeName}: ${(e as Error).message}`);
  }
}

export class Service {
  readonly name: string;
  readonly fullName: string;
  readonly methods: ReadonlyMap<string, Method>;
  /** Strict services refuse unknown method names; a bare name accepts any (queue, Uint8Array). */
  readonly strict: boolean;
  private readonly byAlias = new Map<string, Method>();

  constructor(name: string, methods: Iterable<Method | MethodDef>, opts: { fullName?: string; strict?: boolean } = {}) {
    if (typeof name !== 'string' || name === '') throw new TypeError('service name must be a non-empty string');
    this.name = name;
    this.fullName = opts.fullName ?? name;
    this.strict = opts.strict ?? true;
    const map = new Map<string, Method>();
    for (const d of methods) {
      const m = d instanceof Method ? d : new Method(d);
      map.set(m.name, m);
      if (m.localName) this.byAlias.set(m.localName, m);
    }
    this.methods = map;
  }

  static from(s: ServiceLike | Service): Service {
    if (s instanceof Service) return s;
    if (typeof s === 'string') return new Service(s, [], { strict: false });
    if (s && typeof s === 'object' && (s as DescService).kind === 'service') {
      const d = s as DescService;
      return new Service(
        camelCase(d.name),
        d.methods.map((m) => Method.fromDescriptor(m)),
        { fullName: d.typeName },
      );
    }
    if (s && typeof s === 'object' && typeof (s as ServiceDef).name === 'string' && Array.isArray((s as ServiceDef).methods))
      return new Service((s as ServiceDef).name, (s as ServiceDef).methods);
    throw new TypeError('service must be a protoc-gen-es GenService, a {name, methods} definition or a name');
  }

  method(name: string | Method): Method {
    if (name instanceof Method) return name;
    if (typeof name !== 'string') throw new TypeError('method must be a string');
    const m = this.methods.get(name) ?? this.byAlias.get(name);
    if (m) return m;
    if (!this.strict && name !== '') return new Method({ name });
    throw new PsrpcError(Code.NotFound, `service ${this.name} has no method ${JSON.stringify(name)}`);
  }
}

// ---- options.proto, read from the MethodOptions' unknown fields -------------

function varint(buf: Uint8Array, i: number): [number, number] {
  let value = 0;
  let mul = 1;
  for (;;) {
    if (i >= buf.length) throw new Error('truncated varint');
    const b = buf[i++];
    value += (b & 0x7f) * mul;
    if (!(b & 0x80)) return [value, i];
    mul *= 128;
    if (mul > 2 ** 63) throw new Error('varint too long');
  }
}

function* fields(buf: Uint8Array): Generator<[number, number, number | Uint8Array]> {
  let i = 0;
  while (i < buf.length) {
    let key;
    [key, i] = varint(buf, i);
    const num = Math.floor(key / 8);
    const wt = key & 7;
    if (wt === 0) {
      let v;
      [v, i] = varint(buf, i);
      yield [num, wt, v];
    } else if (wt === 1) i += 8;
    else if (wt === 2) {
      let n;
      [n, i] = varint(buf, i);
      if (i + n > buf.length) throw new Error('truncated field');
      yield [num, wt, buf.subarray(i, i + n)];
      i += n;
    } else if (wt === 5) i += 4;
    else throw new Error(`unsupported wire type ${wt}`);
  }
}

const utf8 = new TextDecoder();

/** Decodes a serialized psrpc.Options. */
export function decodeOptions(buf: Uint8Array): PsrpcOptions {
  const o: PsrpcOptions = {
    subscription: false,
    topics: false,
    topicParams: { group: '', names: [], typed: false, singleServer: false },
    stream: false,
    routing: 'queue',
  };
  const names: Routing[] = ['queue', 'affinity', 'multi'];
  let oneof: Routing | undefined;
  for (const [num, wt, v] of fields(buf)) {
    if (wt === 0) {
      const n = v as number;
      if (num === 1) o.subscription = !!n;
      else if (num === 2) o.topics = !!n;
      else if (num === 4) o.stream = !!n;
      else if (num === 5) oneof = 'multi';
      else if (num === 6) oneof = 'affinity';
      else if (num === 7) oneof = 'queue';
      else if (num === 8) o.routing = names[n] ?? 'queue';
    } else if (wt === 2 && num === 3) {
      for (const [tn, twt, tv] of fields(v as Uint8Array)) {
        if (tn === 1 && twt === 2) o.topicParams.group = utf8.decode(tv as Uint8Array);
        else if (tn === 2 && twt === 2) o.topicParams.names.push(utf8.decode(tv as Uint8Array));
        else if (tn === 3 && twt === 0) o.topicParams.typed = !!tv;
        else if (tn === 4 && twt === 0) o.topicParams.singleServer = !!tv;
      }
    }
  }
  if (oneof !== undefined) o.routing = oneof;
  return o;
}

/** The psrpc options of a method descriptor (defaults when it has none). */
export function psrpcOptions(m: DescMethod): PsrpcOptions {
  const unknown = (m.proto.options as any)?.$unknown as { no: number; wireType: number; data: Uint8Array }[] | undefined;
  // protobuf-es keeps an unknown length-delimited field's bytes with their length prefix.
  const parts = (unknown ?? [])
    .filter((u) => u.no === OPTIONS_EXTENSION_NUMBER && u.wireType === 2)
    .map((u) => {
      const [n, i] = varint(u.data, 0);
      return i + n === u.data.length ? u.data.subarray(i) : u.data;
    });
  const total = parts.reduce((n, p) => n + p.length, 0);
  const buf = new Uint8Array(total);
  let off = 0;
  for (const p of parts) {
    buf.set(p, off);
    off += p.length;
  }
  return decodeOptions(buf);
}

/** protoc-gen-psrpc's name mangling (classic protoc-gen-go CamelCase). */
export function camelCase(s: string): string {
  if (!s) return '';
  let out = '';
  let i = 0;
  const lower = (c: string) => c >= 'a' && c <= 'z';
  if (s[0] === '_') {
    out += 'X';
    i = 1;
  }
  while (i < s.length) {
    let c = s[i];
    if (c === '_' && i + 1 < s.length && lower(s[i + 1])) {
      i++;
      continue;
    }
    if (c >= '0' && c <= '9') {
      out += c;
      i++;
      continue;
    }
    if (lower(c)) c = c.toUpperCase();
    out += c;
    while (i + 1 < s.length && lower(s[i + 1])) {
      i++;
      out += s[i];
    }
    i++;
  }
  return out;
}
