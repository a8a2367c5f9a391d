#!/usr/bin/env node
// bench_client.mjs: the Node binding as a client role of bench/bench.py.
//
// Speaks bench.py's line protocol (bench/c/bench_common.h: READY, START, END,
// RESULT {json}) and calls the `single` scenario's method (service "Bench",
// Echo, queue routing) of bench/c/psrpc_bench.c's C server: --inflight
// workers each `await client.call('Echo', payload)` in a loop, the payload a
// serialized google.protobuf.BytesValue of --payload bytes (plain mode,
// Uint8Array).
//
//     node bench/node/bench_client.mjs --bus URL --role client|local --scenario single
//          [--inflight N] [--payload B] [--warmup S] [--duration S]
//
// --role local: the in-process bus; the process also hosts the server (the
// binding's C echo handler, bench hook: no JavaScript on the server side) on
// its own bus of a named local:// hub the client's bus shares. Other flags of
// bench.py's set are accepted and ignored. The binding is loaded from
// bindings/node of this tree (built by `node scripts/build.js`).
const { Bus, Client, Server, _bench } = await import(
  new URL('../../bindings/node/esm/index.mjs', import.meta.url).href
);

const opts = { bus: null, role: 'client', scenario: 'single', inflight: 1, payload: 64, warmup: 0.3, duration: 1 };
const argv = process.argv.slice(2);
for (let i = 0; i + 1 < argv.length; i += 2) {
  const k = argv[i].replace(/^--/, '');
  if (k in opts) opts[k] = typeof opts[k] === 'number' ? Number(argv[i + 1]) : argv[i + 1];
}
if (!opts.bus || opts.scenario !== 'single') {
  console.error('bench_client.mjs: --bus URL --scenario single needed');
  process.exit(2);
}
const emit = (line) => process.stdout.write(line + '\n');
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// bench_common.h's log-linear histogram: the middle of the bucket of us.
function bucket(us) {
  us = Math.floor(us);
  if (us < 1000) return us + 0.5;
  if (us < 10000) return 1000 + Math.floor((us - 1000) / 10) * 10 + 5;
  if (us < 100000) return 10000 + Math.floor((us - 10000) / 100) * 100 + 50;
  if (us < 1000000) return 100000 + Math.floor((us - 100000) / 1000) * 1000 + 500;
  return 1000000 + Math.min(Math.floor((us - 1000000) / 10000), 899) * 10000 + 5000;
}

// BytesValue{value: 'x' * n}: 0x0a, varint length, bytes.
function bytesValue(n) {
  n = Math.max(n, 16);
  const hdr = [0x0a];
  for (let v = n; ; v >>>= 7) {
    if (v < 0x80) {
      hdr.push(v);
      break;
    }
    hdr.push((v & 0x7f) | 0x80);
  }
  const out = new Uint8Array(hdr.length + n).fill(120);
  out.set(hdr, 0);
  return out;
}

const svc = { name: 'Bench', methods: [{ name: 'Echo' }] };
let url = opts.bus;
if (opts.role === 'local') {
  url = 'local://bench-node';
  const sbus = await Bus.open(url);
  const server = new Server(sbus, svc);
  _bench.serve(server, 'Echo');
  globalThis.keep = [sbus, server];
}
const bus = await Bus.open(url);
const client = new Client(bus, svc, { timeoutMs: 5000 });
const payload = bytesValue(opts.payload);
await client.call('Echo', payload); // reply subscriptions up
emit('READY');

let measuring = false;
let stop = false;
let ops = 0;
let errors = 0;
const hist = new Map();
const worker = async () => {
  while (!stop) {
    const t0 = performance.now();
    let ok = true;
    try {
      await client.call('Echo', payload);
    } catch {
      ok = false;
    }
    if (measuring) {
      const b = bucket((performance.now() - t0) * 1000);
      hist.set(b, (hist.get(b) ?? 0) + 1);
      ops++;
      if (!ok) errors++;
    }
  }
};
const workers = Array.from({ length: opts.inflight }, worker);
await sleep(opts.warmup * 1000);
measuring = true;
emit('START');
const t0 = performance.now();
await sleep(opts.duration * 1000);
measuring = false;
const elapsed = (performance.now() - t0) / 1000;
emit('END');
stop = true;
await Promise.all(workers);
const h = [...hist.entries()].sort((a, b) => a[0] - b[0]);
emit('RESULT ' + JSON.stringify({ role: 'client', ops, elapsed_s: elapsed, errors, hist: h }));
// bench.py closes stdin after reading peak RSS
process.stdin.resume();
process.stdin.on('end', () => process.exit(0));
process.stdin.on('close', () => process.exit(0));
