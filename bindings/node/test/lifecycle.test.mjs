// Process and thread lifecycle: exiting by itself, GC of unclosed objects,
// worker_threads, bad arguments.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { Worker } from 'node:worker_threads';
import { fileURLToPath } from 'node:url';
import { Bus, Client, Server, PsrpcError, Code, Method, Service, _bench } from 'psrpc';
import { Conformance } from './gen/conformance_pb.js';
import { BUSES, sleep, uniqueName } from './helpers.mjs';

const fixture = (name) => fileURLToPath(new URL(`./fixtures/${name}`, import.meta.url));

function run(args, { killAfterMs } = {}) {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    let killed = false;
    const timer = setTimeout(() => {
      killed = true;
      child.kill('SIGKILL');
    }, killAfterMs ?? 15000);
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, out, err, killed });
    });
  });
}

describe('process lifetime', () => {
  for (const [busName, url] of BUSES) {
    it(`exits by itself when everything is closed (${busName})`, async () => {
      for (const mode of ['closed', 'server-closed', 'unref']) {
        const r = await run([fixture('exits.mjs'), mode, url]);
        assert.equal(r.killed, false, `${mode}: still running after 15 s\n${r.err}`);
        assert.equal(r.code, 0, `${mode}: ${r.err}`);
        assert.match(r.out, /answered 2\nend of script/);
      }
    });
  }
  it('an open server or subscription keeps the process alive', async () => {
    for (const mode of ['serving', 'subscribed']) {
      const r = await run([fixture('exits.mjs'), mode], { killAfterMs: 1500 });
      assert.equal(r.killed, true, `${mode}: exited (code ${r.code}) with a server/subscription open`);
      assert.match(r.out, /end of script/);
    }
  });
  it('GC frees buses, clients and servers dropped without closing (--expose-gc)', async () => {
    const r = await run(['--expose-gc', fixture('gc.mjs')], { killAfterMs: 60000 });
    assert.equal(r.code, 0, r.err + r.out);
    const { base, after } = JSON.parse(r.out.trim().split('\n').at(-1));
    assert.ok(after <= base + 2);
  });
});

describe('threads', () => {
  it('a busy JavaScript thread does not stall the loop thread', async () => {
    const bus = await Bus.open('local://');
    const svc = { name: 'BusyJs', methods: [{ name: 'Echo' }, { name: 'Slow' }] };
    const server = new Server(bus, svc);
    _bench.serve(server, 'Echo'); // a C handler: answered on the loop thread
    let slowRan = 0;
    await server.handle('Slow', (req) => { slowRan++; return req; });
    const client = new Client(bus, svc, { timeoutMs: 5000 });
    const slow = client.call('Slow', new Uint8Array([1])); // its request waits for the JS thread
    // block the JS thread for 500 ms while C calls run on the loop thread
    const [ops, secs, errors] = _bench.runC(client, 'Echo', new Uint8Array(8), 1, 0, 500);
    assert.equal(errors, 0);
    assert.ok(ops > 20, `${ops} calls answered in ${secs} s while JavaScript was busy`);
    assert.equal(slowRan, 0);
    assert.deepEqual([...(await slow)], [1]); // delivered once the JS thread is free
    assert.equal(slowRan, 1);
    await bus.close();
  });
});

describe('garbage collection of pending requests', () => {
  it('a request whose handler never answers is failed once its promise is collected (--expose-gc)', async () => {
    assert.equal(typeof globalThis.gc, 'function', 'run with --expose-gc');
    const bus = await Bus.open('local://');
    const server = new Server(bus, 'GcRequest');
    await server.handle('Hang', () => new Promise(() => {})); // never settles, nothing keeps it
    const client = new Client(bus, 'GcRequest');
    const p = client.call('Hang', new Uint8Array(), { timeoutMs: 20000 }).catch((e) => e);
    let settled;
    p.then((v) => (settled = v));
    for (let i = 0; i < 100 && settled === undefined; i++) {
      await sleep(50);
      globalThis.gc();
    }
    assert.ok(settled instanceof PsrpcError, 'the call is answered');
    assert.equal(settled.code, Code.Internal);
    assert.match(settled.message, /garbage collected/);
    await bus.close();
  });
});

describe('worker_threads', () => {
  for (const [busName, url] of BUSES) {
    it(`a bus per worker; closing and terminating workers (${busName})`, async () => {
      const service = uniqueName('WorkerTest');
      const results = await Promise.all([1, 2, 3].map((n) => new Promise((resolve, reject) => {
        // a service per worker: a terminated worker's server must not have
        // claimed another worker's call
        const w = new Worker(fixture('worker.mjs'), { workerData: { url, service: `${service}_${n}`, n, close: n !== 3 } });
        let got;
        w.on('message', async (m) => {
          got = m;
          if (n === 3) {
            await sleep(100);
            await w.terminate(); // with its bus open and a call in flight
          }
        });
        w.on('error', reject);
        w.on('exit', (code) => (got ? resolve([got, code]) : reject(new Error(`worker exited ${code} without answering`))));
      })));
      assert.deepEqual(results.map((r) => r[0]), [[1, 1], [2, 1], [3, 1]]);
      assert.deepEqual(results.map((r) => r[1]), [0, 0, 1]);
      // the main thread's own bus still works afterwards
      const bus = await Bus.open(url);
      const server = new Server(bus, service);
      await server.handle('Ping', (req) => req);
      const c = new Client(bus, service);
      assert.deepEqual([...(await c.call('Ping', new Uint8Array([5])))], [5]);
      await bus.close();
    });
  }
});

describe('bad arguments', () => {
  it('wrong types throw TypeError; unknown methods and closed handles PsrpcError', async () => {
    await assert.rejects(Bus.open(42), TypeError);
    await assert.rejects(Bus.open('local://', null), TypeError);
    await assert.rejects(Bus.open('bogus://x'), (e) => e instanceof PsrpcError);
    const bus = await Bus.open('local://');
    assert.throws(() => new Client({}, 'X'), TypeError);
    assert.throws(() => new Client(bus, 42), TypeError);
    assert.throws(() => new Client(bus, 'bad name!'), (e) => e instanceof PsrpcError && e.code === Code.InvalidArgument);
    assert.throws(() => new Server(bus, 'X', { serverId: 7 }), TypeError);
    const client = new Client(bus, Conformance);
    await assert.rejects(client.call('NoSuchMethod', {}), (e) => e instanceof PsrpcError && e.code === Code.NotFound);
    await assert.rejects(client.call('Echo', 'not a message'), TypeError);
    await assert.rejects(client.call('Echo', { payload: 'not bytes' }), TypeError);
    await assert.rejects(client.call('Echo', {}, { timeoutMs: -1 }), TypeError);
    await assert.rejects(client.call('Echo', {}, { topics: [1] }), TypeError);
    await assert.rejects(client.call('Echo', {}, { metadata: { a: 1 } }), TypeError);
    await assert.rejects(client.call('Echo', {}, { signal: 'x' }), TypeError);
    await assert.rejects(client.call('Echo', {}, { deadline: 'tomorrow' }), TypeError);
    await assert.rejects(client.call('Fanout', {}), TypeError); // a multi method
    assert.throws(() => client.multiCall('Echo', {}), TypeError);
    assert.throws(() => client.subscribe('Echo'), TypeError);
    await assert.rejects(client.openStream('Echo'), TypeError);
    const server = new Server(bus, Conformance);
    await assert.rejects(server.handle('Echo', 'not a function'), TypeError);
    await assert.rejects(server.handle('Nope', () => ({})), (e) => e instanceof PsrpcError && e.code === Code.NotFound);
    await assert.rejects(server.handle('Echo', () => ({}), { affinity: () => 1 }), (e) => e instanceof PsrpcError && e.code === Code.InvalidArgument);
    assert.throws(() => server.publish('Echo', {}), TypeError);
    // a handler answering with the wrong type: the caller sees malformed_result
    await server.handle('Echo', () => 'oops');
    const e = await client.call('Echo', {}).catch((x) => x);
    assert.equal(e.code, Code.MalformedResult);
    // plain mode: Uint8Array only
    const plain = new Client(bus, 'Plain');
    await assert.rejects(plain.call('M', { a: 1 }), TypeError);
    assert.throws(() => new Method({ name: '' }), TypeError);
    assert.throws(() => new Method({ name: 'X', routing: 'sideways' }), TypeError);
    assert.throws(() => Service.from(5), TypeError);
    assert.throws(() => new PsrpcError(5, 'x'), TypeError);
    await bus.close();
    // closed handles
    assert.throws(() => new Client(bus, 'X'), (e) => e instanceof PsrpcError && e.code === Code.Canceled);
    assert.throws(() => bus.stats(), (e) => e instanceof PsrpcError);
    await assert.rejects(client.call('Echo', {}), (e) => e instanceof PsrpcError);
    await assert.rejects(server.handle('Add', () => ({})), (e) => e instanceof PsrpcError);
    assert.throws(() => server.publish('Echo', {}), (e) => e instanceof PsrpcError || e instanceof TypeError);
    await bus.close(); // idempotent
  });
});
