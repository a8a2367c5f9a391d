#!/usr/bin/env node
// conformance_server.mjs: the conformance service (shared/docs/conformance.md,
// tests/interop/conformance.proto) served from Node, with the flags and
// behaviour of the C conformance-server:
//
//     conformance_server.mjs [--bus URL] [--server-id ID] [--affinity F]
//                            [--topic T]... [--methods LIST]
//     test hooks:            [--affinity-delay-ms N] [--skip-claim]
//                            [--max-message-size N] [--compress-threshold N]
//
// Prints "ready" once every registration is confirmed, serves until SIGTERM or
// SIGINT, then closes gracefully (in-flight requests finish) and exits 0. Like
// the C and Go servers: fail_code "CODE@SERVER_ID" fails only on that server;
// failing Echo-like calls carry details (a google.protobuf.StringValue with the
// tag, a BytesValue with the payload); a Chat stream's end is printed as
// {"event":"chat-end","code":...,"message":...,"max_seq":"N"}.
import { parseArgs } from 'node:util';
import { randomBytes } from 'node:crypto';
import { create } from '@bufbuild/protobuf';
import { anyPack, StringValueSchema, BytesValueSchema } from '@bufbuild/protobuf/wkt';
import { Bus, Server, PsrpcError, Code } from 'psrpc';
import { Conformance, ConformanceUpdates } from './gen/conformance_pb.js';

const PLAIN = ['Echo', 'Add', 'Claim', 'Fanout', 'Publish', 'Chat'];
const TOPICAL = ['RegionEcho', 'RegionFanout'];
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const emit = (line) => process.stdout.write(line + '\n');

// "--affinity -1": a value that starts with a dash, as the C programs take it.
const argv = [];
for (let i = 2; i < process.argv.length; i++) {
  const a = process.argv[i];
  if (/^--[a-z-]+$/.test(a) && i + 1 < process.argv.length && /^-\d/.test(process.argv[i + 1])) argv.push(`${a}=${process.argv[++i]}`);
  else argv.push(a);
}
const { values: args } = parseArgs({
  args: argv,
  options: {
    bus: { type: 'string', default: 'redis://127.0.0.1:6379' },
    'server-id': { type: 'string' },
    affinity: { type: 'string', default: '1' },
    topic: { type: 'string', multiple: true, default: [] },
    methods: { type: 'string' },
    'affinity-delay-ms': { type: 'string', default: '0' },
    'skip-claim': { type: 'boolean', default: false },
    // As the C programs: 16 MiB instead of libpsrpc's 1 MiB default, so that a
    // 1 MiB payload plus its envelope passes, as between Go peers.
    'max-message-size': { type: 'string', default: String(16 << 20) },
    'compress-threshold': { type: 'string', default: '0' },
  },
});

const affinity = Number(args.affinity);
const affinityDelay = Number(args['affinity-delay-ms']);
const methods = args.methods ? new Set(args.methods.split(',')) : undefined;

const bus = await Bus.open(args.bus, {
  maxMessageSize: Number(args['max-message-size']),
  compressThreshold: Number(args['compress-threshold']),
});
const server = new Server(bus, Conformance, { serverId: args['server-id'], skipClaim: args['skip-claim'] });
const updates = new Server(bus, ConformanceUpdates, { serverId: args['server-id'], skipClaim: args['skip-claim'] });
let counter = 0;

function failsHere(failCode) {
  if (!failCode) return undefined;
  const at = failCode.indexOf('@');
  if (at < 0) return failCode;
  return failCode.slice(at + 1) === server.id ? failCode.slice(0, at) : undefined;
}

async function echo(req, ctx) {
  if (req.delayMs) await sleep(req.delayMs);
  const code = failsHere(req.failCode);
  if (code !== undefined) {
    const details = [];
    if (req.tag) details.push(anyPack(StringValueSchema, create(StringValueSchema, { value: req.tag })));
    if (req.payload.length) details.push(anyPack(BytesValueSchema, create(BytesValueSchema, { value: req.payload })));
    throw new PsrpcError(code, req.failMessage, { details });
  }
  return {
    payload: req.payload, serverId: server.id, tag: req.tag,
    metadata: ctx.metadata, topic: ctx.topics[0] ?? '',
  };
}

async function claimAffinity() {
  if (affinityDelay) await sleep(affinityDelay);
  return affinity;
}

function add(req) {
  counter += req.increment;
  return { value: counter };
}

function publish(req) {
  let method;
  try {
    method = updates.service.method(req.method);
  } catch {
    throw new PsrpcError(Code.InvalidArgument, 'unknown update method');
  }
  let published = 0;
  for (let seq = 1; seq <= req.count; seq++) {
    try {
      updates.publish(method.name, { seq, payload: req.payload, serverId: server.id, nonce: randomBytes(8).toString('hex') },
        { topics: req.topic });
    } catch (e) {
      throw new PsrpcError(e.code ?? Code.Internal, `publish ${published + 1} failed: ${e.message}`);
    }
    published++;
  }
  return { published };
}

async function chat(stream) {
  let maxSeq = 0;
  try {
    for await (const m of stream) {
      maxSeq = Math.max(maxSeq, m.seq);
      if (m.closeCode) {
        stream.close(new PsrpcError(m.closeCode, m.closeMessage));
        break;
      }
      if (m.closeMessage) {
        stream.close();
        break;
      }
      await stream.send({ seq: m.seq + 1, payload: m.payload });
    }
  } catch (e) {
    if (!(e instanceof PsrpcError)) throw e;
  }
  // a clean close (stream.closed resolves undefined) reads as canceled "stream closed", as in C
  const cause = (await stream.closed) ?? new PsrpcError(Code.Canceled, 'stream closed');
  emit(JSON.stringify({ event: 'chat-end', code: cause.code, message: cause.message, max_seq: String(maxSeq) }));
}

const handlers = { Echo: echo, Claim: echo, Fanout: echo, RegionEcho: echo, RegionFanout: echo, Add: add, Publish: publish, Chat: chat };
const registrations = [];
for (const name of PLAIN)
  if (!methods || methods.has(name))
    registrations.push(server.handle(name, handlers[name], name === 'Claim' ? { affinity: claimAffinity } : {}));
for (const name of TOPICAL)
  if (!methods || methods.has(name))
    for (const topic of args.topic) registrations.push(server.handle(name, handlers[name], { topics: topic }));
try {
  await Promise.all(registrations);
} catch (e) {
  console.error(`conformance_server.mjs: ${e.message}`);
  await bus.close();
  process.exit(1);
}
emit('ready');

await new Promise((resolve) => {
  process.once('SIGINT', resolve);
  process.once('SIGTERM', resolve);
});
// Graceful: in-flight requests (delayed answers included) finish.
await server.close();
await updates.close();
await bus.close();
