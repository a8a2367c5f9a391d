// Interceptors, retries, log events and trace context (issue 16).
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as otel from '@opentelemetry/api';
import { Bus, Client, Server, PsrpcError, Code, TraceContext, otelPropagation, setLogHandler } from 'psrpc';
import { BUSES, sleep, uniqueName } from './helpers.mjs';

const enc = (x) => new TextEncoder().encode(JSON.stringify(x));
const dec = (b) => JSON.parse(new TextDecoder().decode(b));

/** Echo answers with the request's metadata entries. */
async function serveEcho(bus, svc, options) {
  const server = new Server(bus, svc, options);
  let calls = 0;
  await server.handle('Echo', (_req, ctx) => {
    calls++;
    return enc(ctx.metadataEntries);
  });
  return { server, calls: () => calls };
}

for (const [kind, url] of BUSES.filter(([k]) => k !== 'redis')) {
  describe(`interceptors over ${kind}`, () => {
    it('client and server interceptors: metadata, failing, rejecting, outcomes', async () => {
      const bus = await Bus.open(url);
      const svc = uniqueName('NodeHooks');
      const sOut = [];
      const { server, calls } = await serveEcho(bus, svc, {
        interceptors: [{
          beforeHandle(info, md) {
            assert.equal(info.role, 'server');
            assert.ok(info.requestId && info.deadlineNs > 0n);
            if (md.get('authorization') !== 'secret') throw new PsrpcError(Code.PermissionDenied, 'who are you');
          },
          onOutcome: (info, o) => sOut.push([info, o]),
        }],
      });
      const cOut = [];
      const auth = (token) => ({
        beforeSend(info, md) {
          assert.deepEqual([info.role, info.kind, info.method], ['client', 'unary', 'Echo']);
          if (md.has('deny')) throw new PsrpcError(Code.Unauthenticated, 'no token for you');
          md.delete('drop-me');
          md.set('authorization', token);
        },
        onOutcome: (info, o) => cOut.push([info, o]),
      });
      const client = new Client(bus, svc, { interceptors: [auth('secret')] });
      assert.deepEqual(dec(await client.call('Echo', new Uint8Array(), { metadata: { a: '1', 'drop-me': '2' } })),
        [['a', '1'], ['authorization', 'secret']]);
      await assert.rejects(client.call('Echo', new Uint8Array(), { metadata: { deny: '1' } }),
        (e) => e.code === Code.Unauthenticated && e.message === 'no token for you');
      const other = new Client(bus, svc).addInterceptor(auth('wrong'));
      await assert.rejects(other.call('Echo', new Uint8Array()), (e) => e.code === Code.PermissionDenied && e.message === 'who are you');
      assert.equal(calls(), 1);
      assert.equal(cOut.length, 3); // the other client's interceptor records here too
      assert.equal(cOut[2][1].error.code, Code.PermissionDenied);
      assert.equal(cOut[2][1].attempts, 1);
      assert.equal(cOut[0][1].attempts, 1);
      assert.equal(cOut[0][1].error, undefined);
      assert.equal(cOut[0][1].serverId, server.id);
      assert.equal(cOut[0][0].clientId, client.id);
      assert.equal(cOut[1][1].attempts, 0);
      assert.equal(cOut[1][1].error.code, Code.Unauthenticated);
      for (let i = 0; i < 100 && sOut.length < 2; i++) await sleep(10);
      assert.equal(sOut.length, 2);
      assert.equal(sOut[0][1].error, undefined);
      assert.equal(sOut[1][1].error.code, Code.PermissionDenied);
      assert.equal(sOut[1][0].clientId, other.id);
      await bus.close();
    });

    it('retries: recoverable codes, attempts, retryOn, setRetries(null)', async () => {
      const bus = await Bus.open(url);
      const flaky = async (fails, code) => {
        const svc = uniqueName('NodeRetry');
        const server = new Server(bus, svc);
        let n = 0;
        await server.handle('Echo', () => {
          n++;
          if (n <= fails) throw new PsrpcError(code, `attempt ${n}`);
          return enc(`ok after ${n - 1}`);
        });
        return { svc, n: () => n };
      };
      const attempts = [];
      const rec = { onOutcome: (_i, o) => attempts.push(o.attempts) };
      let f = await flaky(2, Code.Unavailable);
      let c = new Client(bus, f.svc, { retries: { maxAttempts: 3 }, interceptors: [rec] });
      assert.equal(dec(await c.call('Echo', new Uint8Array())), 'ok after 2');
      f = await flaky(2, Code.Unavailable);
      c = new Client(bus, f.svc, { retries: { maxAttempts: 2 }, interceptors: [rec] });
      await assert.rejects(c.call('Echo', new Uint8Array()), (e) => e.code === Code.Unavailable && e.message === 'attempt 2');
      f = await flaky(1, Code.Aborted);
      c = new Client(bus, f.svc, { retries: { maxAttempts: 3 }, interceptors: [rec] });
      await assert.rejects(c.call('Echo', new Uint8Array()), (e) => e.code === Code.Aborted);
      assert.equal(f.n(), 1);
      f = await flaky(1, Code.Aborted);
      c = new Client(bus, f.svc, { retries: { maxAttempts: 3, retryOn: ['aborted'] }, interceptors: [rec] });
      await c.call('Echo', new Uint8Array());
      assert.equal(f.n(), 2);
      f = await flaky(1, Code.Unavailable);
      c = new Client(bus, f.svc, { retries: { maxAttempts: 3 }, interceptors: [rec] });
      c.setRetries(null);
      await assert.rejects(c.call('Echo', new Uint8Array()));
      assert.equal(f.n(), 1);
      assert.deepEqual(attempts, [3, 2, 1, 2, 1]);
      assert.throws(() => c.setRetries({ maxAttempts: -1 }), TypeError);
      assert.throws(() => c.setRetries({ retryOn: [1] }), TypeError);
      await bus.close();
    });
  });
}

const TP = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';

describe('trace context', () => {
  it('parses, makes children, rejects invalid traceparents', () => {
    const t = new TraceContext(TP, 'rojo=00f067aa0ba902b7');
    assert.deepEqual([t.traceId, t.spanId, t.sampled], ['4bf92f3577b34da6a3ce929d0e0e4736', '00f067aa0ba902b7', true]);
    const c = t.child();
    assert.equal(c.traceId, t.traceId);
    assert.notEqual(c.spanId, t.spanId);
    assert.equal(c.tracestate, t.tracestate);
    assert.deepEqual(new TraceContext(TP, '').toMetadata(), [['traceparent', TP]]);
    for (const bad of ['', '00-00000000000000000000000000000000-00f067aa0ba902b7-01',
      'ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01', TP.toUpperCase(), TP.slice(0, -3)])
      assert.throws(() => new TraceContext(bad), TypeError, bad);
  });

  it('crosses a hop: ctx.callOptions() forwards a child', async () => {
    const bus = await Bus.open('local://');
    const [front, back] = [uniqueName('NodeFront'), uniqueName('NodeBack')];
    const seen = [];
    const bs = new Server(bus, back);
    await bs.handle('Echo', (_r, ctx) => {
      seen.push(ctx.trace);
      return enc(ctx.metadataEntries.map(([k]) => k));
    });
    const backClient = new Client(bus, back);
    const fs = new Server(bus, front);
    await fs.handle('Echo', (_r, ctx) => {
      seen.push(ctx.trace);
      return backClient.call('Echo', new Uint8Array(), ctx.callOptions());
    });
    const client = new Client(bus, front);
    const sent = new TraceContext(TP, 'k=v');
    assert.deepEqual(dec(await client.call('Echo', new Uint8Array(), { metadata: { traceparent: 'junk' }, trace: sent })),
      ['traceparent', 'tracestate']);
    assert.deepEqual(seen[0], sent);
    assert.equal(seen[1].traceId, sent.traceId);
    assert.equal(seen[1].tracestate, 'k=v');
    assert.notEqual(seen[1].spanId, sent.spanId);
    assert.deepEqual(dec(await client.call('Echo', new Uint8Array())), []);
    await bus.close();
  });

  it('otelPropagation sends the active OpenTelemetry span context', async () => {
    // A minimal synchronous context manager (the API's default one has no active context).
    let active = otel.ROOT_CONTEXT;
    otel.context.setGlobalContextManager({
      active: () => active,
      with(ctx, fn, thisArg, ...args) {
        const prev = active;
        active = ctx;
        try { return fn.call(thisArg, ...args); } finally { active = prev; }
      },
      bind: (_c, t) => t,
      enable() { return this; },
      disable() { return this; },
    });
    const bus = await Bus.open('local://');
    const svc = uniqueName('NodeOtel');
    await serveEcho(bus, svc);
    const client = new Client(bus, svc, { interceptors: [otelPropagation()] });
    const cx = new TraceContext(TP, 'a=b').toOtel();
    const p = otel.context.with(cx, () => client.call('Echo', new Uint8Array()));
    assert.deepEqual(dec(await p), [['traceparent', TP], ['tracestate', 'a=b']]);
    assert.deepEqual(dec(await client.call('Echo', new Uint8Array())), []);
    const mine = new TraceContext('00-4bf92f3577b34da6a3ce929d0e0e4736-1111111111111111-00');
    const q = otel.context.with(cx, () => client.call('Echo', new Uint8Array(), { trace: mine }));
    assert.deepEqual(dec(await q), [['traceparent', mine.traceparent]]);
    assert.deepEqual(TraceContext.fromOtel(cx), new TraceContext(TP, 'a=b'));
    otel.context.disable();
    await bus.close();
  });
});

describe('log events', () => {
  it('reach the handler from a Redis bus, filtered by level', async () => {
    const url = BUSES.find(([k]) => k === 'redis')[1];
    const got = [];
    setLogHandler((level, component, message) => got.push([level, component, message]), { level: 'info' });
    let bus = await Bus.open(url);
    for (let i = 0; i < 200 && !got.some(([l, c]) => l === 'info' && c === 'bus'); i++) await sleep(10);
    const ev = got.find(([l, c]) => l === 'info' && c === 'bus');
    assert.ok(ev, JSON.stringify(got));
    assert.match(ev[2], /connected/);
    await bus.close();
    got.length = 0;
    setLogHandler((level, component, message) => got.push([level, component, message]), { level: 'warn' });
    bus = await Bus.open(url);
    await sleep(200);
    await bus.close();
    assert.deepEqual(got.filter(([l]) => l === 'info'), []);
    setLogHandler(null);
    assert.throws(() => setLogHandler(null, { level: 'loud' }), TypeError);
  });
});
