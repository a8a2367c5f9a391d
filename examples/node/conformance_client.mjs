#!/usr/bin/env node
// conformance_client.mjs: the conformance client in Node, with the command
// protocol of the C conformance-client (tests/interop/conformance_client.c),
// so the interop scenarios can drive a Node client:
//
//     conformance_client.mjs [--bus URL] [--client-id ID] [--timeout-ms N]
//                            [--max-message-size N] [--compress-threshold N]
//     conformance_client.mjs --print-methods   the method table, one line each
//     conformance_client.mjs --has-streams     exit 0 (this binding has streams)
//
// Prints "ready" once the bus is connected, then reads one command per line
// (call, multi, cancel, sub, unsub, chat, chat_send, chat_close, quit; a word
// followed by key=value pairs, values %-encoded) and prints every outcome as
// one JSON line carrying the command's id, exactly as the C client does.
import { parseArgs } from 'node:util';
import { createInterface } from 'node:readline';
import { create, fromBinary, toBinary } from '@bufbuild/protobuf';
import { Bus, Client, Method, PsrpcError, Service, Code, psrpcOptions } from 'psrpc';
import {
  Conformance, ConformanceUpdates, AddRequestSchema, AddResultSchema, EchoRequestSchema, EchoResponseSchema,
  PublishRequestSchema, PublishResultSchema, ChatMessageSchema,
} from './gen/conformance_pb.js';

const emit = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');
const hex = (b) => Buffer.from(b).toString('hex');
const unhex = (s) => {
  if (!/^([0-9a-fA-F]{2})*$/.test(s)) throw new Error('bad hex');
  return new Uint8Array(Buffer.from(s, 'hex'));
};

function errorObj(e) {
  return { code: e.code, message: e.message, details: e.details.map((d) => ({ type_url: d.typeUrl, value: hex(d.value) })) };
}
function outError(obj, e, local = false) {
  obj.ok = false;
  obj.error = e instanceof PsrpcError ? errorObj(e) : { code: Code.Internal, message: String(e?.message ?? e), details: [] };
  if (local) obj.local = true;
  return obj;
}
function localError(id, kind, code, message) {
  emit({ id, kind, ok: false, error: { code, message, details: [] }, local: true });
}

class Args {
  constructor(pairs) { this.pairs = pairs; }
  get(k, d) { const p = this.pairs.find(([x]) => x === k); return p ? p[1] : d; }
  all(k) { return this.pairs.filter(([x]) => x === k).map(([, v]) => v); }
  keys() { return this.pairs.map(([k]) => k); }
}

function parse(line) {
  const words = line.trim().split(/\s+/).filter(Boolean);
  if (!words.length) return [undefined, new Args([])];
  const pairs = [];
  for (const tok of words.slice(1)) {
    const eq = tok.indexOf('=');
    if (eq < 0) continue;
    const k = tok.slice(0, eq);
    const v = tok.slice(eq + 1);
    pairs.push([k, k === 'md' ? v : decodeURIComponent(v)]);
  }
  return [words[0], new Args(pairs)];
}

const { values: args } = parseArgs({
  options: {
    bus: { type: 'string', default: 'redis://127.0.0.1:6379' },
    'client-id': { type: 'string' },
    'timeout-ms': { type: 'string', default: '0' },
    'max-message-size': { type: 'string', default: String(16 << 20) },
    'compress-threshold': { type: 'string', default: '0' },
    'print-methods': { type: 'boolean', default: false },
    'has-streams': { type: 'boolean', default: false },
  },
});

if (args['has-streams']) process.exit(0);

if (args['print-methods']) {
  for (const desc of [Conformance, ConformanceUpdates]) {
    const svc = Service.from(desc);
    for (const md of desc.methods) {
      const m = svc.method(md.name);
      const opts = psrpcOptions(md);
      const routing = { queue: 0, affinity: 1, multi: 2 }[m.routing];
      const requireClaim = m.routing !== 'multi' && !m.singleServer;
      console.log(`${svc.name}.${m.name} affinity=${+(m.routing === 'affinity')} multi=${+(m.routing === 'multi')} ` +
        `require_claim=${+requireClaim} queue=${+(m.routing === 'queue')} subscription=${+m.subscription} ` +
        `topics=${m.topics ? Math.max(1, opts.topicParams.names.length) : 0} stream=${+m.stream} routing=${routing} ` +
        `input=${md.input.typeName} output=${md.output.typeName}`);
    }
  }
  process.exit(0);
}

let bus;
let client;
let updates;
try {
  bus = await Bus.open(args.bus, {
    maxMessageSize: Number(args['max-message-size']),
    compressThreshold: Number(args['compress-threshold']),
  });
  const timeoutMs = Number(args['timeout-ms']) || undefined;
  client = new Client(bus, Conformance, { clientId: args['client-id'], timeoutMs });
  updates = new Client(bus, ConformanceUpdates, { timeoutMs });
} catch (e) {
  console.error(`conformance_client.mjs: ${e.message}`);
  process.exit(1);
}

// Bytes-level methods: responses are decoded here ("undecodable").
const raw = new Map([...client.service.methods].map(([name, m]) => [name, new Method({
  name: m.name, routing: m.routing, subscription: m.subscription, topics: m.topics, stream: m.stream,
  singleServer: m.singleServer, outputType: m.outputType,
})]));
const calls = new Map(); // id -> AbortController | multi iterator
const subs = new Map();
const chats = new Map();

function request(method, a) {
  if (a.get('raw') !== undefined) return unhex(a.get('raw'));
  if (method === 'Add') return toBinary(AddRequestSchema, create(AddRequestSchema, { increment: parseInt(a.get('increment', '0'), 10) }));
  const payload = unhex(a.get('payload', ''));
  if (method === 'Publish')
    return toBinary(PublishRequestSchema, create(PublishRequestSchema, {
      method: a.get('pmethod', ''), topic: a.all('ptopic'), count: parseInt(a.get('count', '0'), 10), payload,
    }));
  return toBinary(EchoRequestSchema, create(EchoRequestSchema, {
    payload, delayMs: parseInt(a.get('delay_ms', '0'), 10), failCode: a.get('fail_code', ''),
    failMessage: a.get('fail_message', ''), tag: a.get('tag', ''),
  }));
}

function response(method, data) {
  try {
    if (method === 'Add') return { value: fromBinary(AddResultSchema, data).value };
    if (method === 'Publish') return { published: fromBinary(PublishResultSchema, data).published };
    const r = fromBinary(EchoResponseSchema, data);
    return { server_id: r.serverId, payload: hex(r.payload), tag: r.tag, topic: r.topic, metadata: { ...r.metadata } };
  } catch {
    return { undecodable: true };
  }
}

function options(a) {
  const o = {};
  const t = parseInt(a.get('timeout_ms', '0'), 10);
  if (t) o.timeoutMs = t;
  if (a.get('topic') !== undefined) o.topics = [a.get('topic')];
  const md = [];
  for (const kv of a.all('md')) {
    const i = kv.indexOf(':');
    const k = i < 0 ? kv : kv.slice(0, i);
    const v = i < 0 ? '' : kv.slice(i + 1);
    md.push([decodeURIComponent(k), decodeURIComponent(v)]);
  }
  if (md.length) o.metadata = md;
  if (a.keys().some((k) => k.startsWith('sel_'))) {
    const pick = a.get('sel_pick');
    o.selection = {
      minimumAffinity: parseFloat(a.get('sel_min', '0')),
      maximumAffinity: parseFloat(a.get('sel_max', '0')),
      acceptFirstAvailable: a.get('sel_afa', '0') === '1',
      affinityTimeoutMs: parseInt(a.get('sel_timeout_ms', '0'), 10),
      shortCircuitTimeoutMs: parseInt(a.get('sel_short_ms', '0'), 10),
    };
    if (pick !== undefined) {
      const lowest = pick === 'lowest';
      o.selection.select = (claims) => {
        if (!claims.length) throw new PsrpcError(Code.Unavailable, 'no servers available');
        return claims.reduce((x, y) => ((lowest ? y.affinity < x.affinity : y.affinity > x.affinity) ? y : x)).serverId;
      };
    }
  }
  return o;
}

function call(id, a, multi) {
  const method = a.get('method', '');
  const kind = multi ? 'done' : 'result';
  const m = raw.get(method);
  if (!m) return localError(id, kind, 'invalid_argument', 'unknown method');
  let data;
  try {
    data = request(method, a);
  } catch {
    return localError(id, kind, 'invalid_argument', 'bad payload');
  }
  const ac = new AbortController();
  const opts = { ...options(a), signal: ac.signal };
  if (multi) {
    let it;
    try {
      it = client.multiCall(m, data, opts);
    } catch (e) {
      return emit(outError({ id, kind }, e, true));
    }
    calls.set(id, ac);
    (async () => {
      try {
        for await (const r of it) {
          const obj = { id, kind: 'multi-result' };
          if (r.error) outError(obj, r.error);
          else Object.assign(obj, { ok: true, resp: response(method, r.response) });
          if (r.serverId) obj.server_id = r.serverId;
          emit(obj);
        }
        emit({ id, kind: 'done', ok: true });
      } catch (e) {
        emit(outError({ id, kind: 'done' }, e));
      } finally {
        calls.delete(id);
      }
    })();
    return undefined;
  }
  calls.set(id, ac);
  let p;
  try {
    p = client.call(m, data, opts);
  } catch (e) {
    calls.delete(id);
    return emit(outError({ id, kind }, e, true));
  }
  p.then(
    (res) => ({ id, kind: 'result', ok: true, resp: response(method, res) }),
    (e) => {
      const obj = outError({ id, kind: 'result' }, e, e instanceof TypeError);
      if (e instanceof PsrpcError && e.serverId) obj.server_id = e.serverId;
      return obj;
    },
  ).then((obj) => {
    calls.delete(id);
    emit(obj);
  });
  return undefined;
}

function sub(id, a) {
  const method = a.get('method', '');
  if (!updates.service.methods.has(method)) return localError(id, 'ready-error', 'invalid_argument', 'unknown method');
  const topic = a.get('topic');
  let s;
  try {
    s = updates.subscribe(method, topic !== undefined ? { topics: [topic] } : {});
  } catch (e) {
    return emit(outError({ id, kind: 'ready-error' }, e, true));
  }
  subs.set(id, s);
  (async () => {
    try {
      await s.ready;
    } catch (e) {
      subs.delete(id);
      return emit(outError({ id, kind: 'ready-error' }, e));
    }
    emit({ id, kind: 'ready' });
    try {
      for await (const u of s)
        emit({ id, kind: 'update', seq: u.seq, payload: hex(u.payload), server_id: u.serverId, nonce: u.nonce });
    } catch {
      /* ended with an error */
    }
    subs.delete(id);
    emit({ id, kind: 'unsubscribed' });
    return undefined;
  })();
  return undefined;
}

function chat(id, a) {
  const c = { opened: undefined, stream: undefined, openError: undefined };
  chats.set(id, c);
  c.opened = (async () => {
    try {
      c.stream = await client.openStream('Chat', options(a));
    } catch (e) {
      c.openError = e;
      const local = !(e instanceof PsrpcError) || e instanceof TypeError;
      emit(outError({ id, kind: 'open' }, e, local));
      if (!local) emit(outError({ id, kind: 'closed' }, e));
      chats.delete(id);
      return;
    }
    emit({ id, kind: 'open', ok: true });
    const st = c.stream;
    (async () => {
      try {
        for await (const m of st)
          emit({ id, kind: 'message', seq: m.seq, payload: hex(m.payload), close_code: m.closeCode, close_message: m.closeMessage });
      } catch {
        /* the close cause follows */
      }
      const cause = (await st.closed) ?? new PsrpcError(Code.Canceled, 'stream closed');
      emit(outError({ id, kind: 'closed' }, cause));
      chats.delete(id);
    })();
  })();
}

async function chatSend(id, a) {
  const c = chats.get(id);
  const sendId = a.get('send_id', '');
  if (!c) return emit({ id, kind: 'sent', send_id: sendId, ok: false, error: { code: 'not_found', message: 'no such stream', details: [] }, local: true });
  let msg;
  try {
    msg = { seq: parseInt(a.get('seq', '0'), 10), payload: unhex(a.get('payload', '')), closeCode: a.get('close_code', ''), closeMessage: a.get('close_message', '') };
  } catch {
    return localError(id, 'sent', 'invalid_argument', 'bad payload');
  }
  await c.opened;
  const obj = { id, kind: 'sent', send_id: sendId };
  if (!c.stream) return emit(outError(obj, c.openError ?? new PsrpcError(Code.Canceled, 'stream closed')));
  try {
    await c.stream.send(msg);
    obj.ok = true;
  } catch (e) {
    outError(obj, e);
  }
  return emit(obj);
}

async function chatClose(id, a) {
  const c = chats.get(id);
  if (!c) return;
  await c.opened;
  const code = a.get('code');
  c.stream?.close(code ? new PsrpcError(code, a.get('message', '')) : undefined);
}

process.stdout.write('ready\n');
const rl = createInterface({ input: process.stdin, crlfDelay: Infinity });
for await (const line of rl) {
  const [cmd, a] = parse(line);
  if (cmd === undefined) continue;
  const id = a.get('id', '');
  if (cmd === 'quit') break;
  switch (cmd) {
    case 'call': call(id, a, false); break;
    case 'multi': call(id, a, true); break;
    case 'cancel': calls.get(id)?.abort(); break;
    case 'sub': sub(id, a); break;
    case 'unsub': subs.get(id)?.close(); break;
    case 'chat': chat(id, a); break;
    case 'chat_send': chatSend(id, a); break;
    case 'chat_close': chatClose(id, a); break;
    default: localError(id, 'bad-command', 'invalid_argument', cmd);
  }
}
rl.close();
await client.close();
await updates.close();
await bus.close();
