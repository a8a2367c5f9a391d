#!/usr/bin/env node
// bench_overhead.mjs: what the Node binding adds per call (issue 13).
//
// One process, one C server (the echo handler and stream acceptor are C,
// registered through the binding's bench hook: no JavaScript runs on the
// server side) on its own bus, and a client bus. Against that server, in the
// same run and alternating rounds:
//
//   c     C calls (psrpc_client_call / psrpc_stream_send) issued from their
//         completion callbacks, K in flight (the binding's bench hook; the
//         JavaScript thread just waits)
//   node  await client.call(...) / stream.send(...) from JavaScript, K in
//         flight, Uint8Array payloads (plain mode)
//
// Scenarios: unary (Echo, queue routing with the claim handshake) and stream
// (Chat sends, each acknowledged). Prints one JSON line per cell and a table;
// per-call overhead at 1 in flight = node mean latency - c mean latency;
// throughput ratio at K in flight = node / c.
//
//     node bench/node/bench_overhead.mjs [--bus URL]... [--inflight 1,256]
//          [--duration-ms 3000] [--rounds 3] [--payload 64]
import { parseArgs } from 'node:util';
import { Bus, Client, Server, _bench } from 'psrpc';

const { values } = parseArgs({
  options: {
    bus: { type: 'string', multiple: true },
    inflight: { type: 'string', default: '1,256' },
    'duration-ms': { type: 'string', default: '3000' },
    'warmup-ms': { type: 'string', default: '500' },
    rounds: { type: 'string', default: '3' },
    payload: { type: 'string', default: '64' },
    scenarios: { type: 'string', default: 'unary,stream' },
  },
});
const buses = values.bus ?? ['local://'];
const inflights = values.inflight.split(',').map(Number);
const duration = Number(values['duration-ms']);
const warmup = Number(values['warmup-ms']);
const rounds = Number(values.rounds);
const payload = new Uint8Array(Number(values.payload)).fill(120);
const median = (a) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)];
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function nodeRun(client, scenario, inflight) {
  let stop = false;
  let ops = 0;
  let counting = false;
  let stream;
  if (scenario === 'stream') stream = await client.openStream('Chat', { timeoutMs: 5000 });
  const one = scenario === 'stream' ? () => stream.send(payload) : () => client.call('Echo', payload);
  const worker = async () => {
    while (!stop) {
      await one();
      if (counting) ops++;
    }
  };
  const workers = Array.from({ length: inflight }, worker);
  await sleep(warmup);
  counting = true;
  const t0 = performance.now();
  await sleep(duration);
  const n = ops;
  const secs = (performance.now() - t0) / 1000;
  counting = false;
  stop = true;
  await Promise.all(workers);
  stream?.close();
  return [n, secs];
}

const results = [];
for (const url0 of buses) {
  const service = `NodeBench_${process.pid}`;
  const url = url0.replace(/\/+$/, '') === 'local:' ? `local://${service}` : url0; // a named hub: both buses share it
  const svc = { name: service, methods: [{ name: 'Echo' }, { name: 'Chat', stream: true }] };
  const sbus = await Bus.open(url);
  const cbus = await Bus.open(url);
  const server = new Server(sbus, svc);
  _bench.serve(server, 'Echo');
  _bench.serve(server, 'Chat');
  const client = new Client(cbus, svc, { timeoutMs: 10000 });
  await client.call('Echo', payload); // replies subscribed
  for (const scenario of values.scenarios.split(',')) {
    for (const k of inflights) {
      const c = [];
      const n = [];
      for (let r = 0; r < rounds; r++) {
        const [ops, secs, errs] = _bench.runC(client, scenario === 'stream' ? 'Chat' : 'Echo', payload, k, warmup, duration);
        if (errs) console.error(`c: ${errs} errors`);
        c.push(ops / secs);
        const [nops, nsecs] = await nodeRun(client, scenario, k);
        n.push(nops / nsecs);
      }
      const cr = median(c);
      const nr = median(n);
      const row = {
        bus: url0, scenario, inflight: k, c_calls_per_s: Math.round(cr), node_calls_per_s: Math.round(nr),
        c_us_per_call: +(1e6 / cr * k).toFixed(1), node_us_per_call: +(1e6 / nr * k).toFixed(1),
        overhead_us: +((1e6 / nr - 1e6 / cr) * k).toFixed(1), throughput_ratio: +(nr / cr).toFixed(2),
      };
      results.push(row);
      console.log(JSON.stringify(row));
    }
  }
  await sbus.close();
  await cbus.close();
}
console.log('\n| bus | scenario | in flight | C calls/s | Node calls/s | C µs/call | Node µs/call | Node − C µs | Node/C throughput |');
console.log('|---|---|---|---|---|---|---|---|---|');
for (const r of results)
  console.log(`| ${r.bus.split('://')[0]} | ${r.scenario} | ${r.inflight} | ${r.c_calls_per_s} | ${r.node_calls_per_s} | ${r.c_us_per_call} | ${r.node_us_per_call} | ${r.overhead_us} | ${r.throughput_ratio} |`);
