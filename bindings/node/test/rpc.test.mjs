// Every RPC kind over local://, Redis and NATS, typed from protoc-gen-es
// descriptors (tests/interop/conformance.proto, examples/add_value.proto).
import { describe, it, before, after, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import { create, createRegistry } from '@bufbuild/protobuf';
import { anyPack, anyUnpack, StringValueSchema, BytesValueSchema } from '@bufbuild/protobuf/wkt';
import { Bus, Client, Server, PsrpcError, Code, Service } from 'psrpc';
import { Conformance, ConformanceUpdates, EchoRequestSchema } from './gen/conformance_pb.js';
import { Counter } from './gen/add_value_pb.js';
import { BUSES, sleep, timed, uniqueName, TIME_FACTOR } from './helpers.mjs';

// The conformance service under a name of this test run (two runs on one
// broker must not answer each other's calls).
function renamed(desc, name) {
  const s = Service.from(desc);
  return new Service(name, s.methods.values(), { fullName: s.fullName });
}

for (const [busName, url] of BUSES) {
  describe(`rpc over ${busName}`, { timeout: 120000 * TIME_FACTOR }, () => {
    let bus;
    let svc;
    let updates;
    before(async () => {
      bus = await Bus.open(url, { readyTimeoutMs: 5000 });
    });
    // a fresh service name per test: a failed test's servers answer nobody else
    beforeEach(() => {
      svc = renamed(Conformance, uniqueName('Conf'));
      updates = renamed(ConformanceUpdates, uniqueName('Upd'));
    });
    after(async () => {
      await bus.close();
      assert.equal(bus.state, 'closed');
    });

    it('unary call, typed messages, server id and stats', async () => {
      const server = new Server(bus, Counter, { serverId: `SRV_${process.pid}` });
      const name = uniqueName('Counter');
      // Counter itself under a unique wire name: same methods
      const counter = renamed(Counter, name);
      const s2 = new Server(bus, counter);
      let total = 0;
      await s2.handle('AddValue', async (req, ctx) => {
        assert.equal(typeof req.increment, 'number');
        assert.ok(ctx.deadline instanceof Date);
        return { value: (total += req.increment) };
      });
      const client = new Client(bus, counter, { timeoutMs: 5000 });
      for (const inc of [1, 2, 3]) {
        const res = await client.call('AddValue', { increment: inc });
        assert.equal(res.$typeName, 'example.AddResult');
        assert.equal(res.value, [1, 3, 6][inc - 1]);
      }
      // the local name works too
      assert.equal((await client.call('addValue', { increment: 4 })).value, 10);
      const st = bus.stats();
      assert.equal(st.requestsInFlight, 0);
      assert.ok(st.messagesPublished > 0);
      await client.close();
      await s2.close();
      await server.close();
    });

    it('errors carry code, message, details and server id', async () => {
      const server = new Server(bus, svc, { serverId: uniqueName('SRVE') });
      await server.handle('Echo', async (req) => {
        if (req.failCode === 'plain') throw new Error('plain failure');
        if (req.failCode === 'custom') throw new PsrpcError('my_custom_code', 'custom é🎉');
        throw new PsrpcError(req.failCode, req.failMessage, {
          details: [anyPack(StringValueSchema, create(StringValueSchema, { value: req.tag })),
            anyPack(BytesValueSchema, create(BytesValueSchema, { value: req.payload }))],
        });
      });
      const client = new Client(bus, svc);
      for (const code of Object.values(Code).filter((c) => c !== '')) {
        const err = await client.call('Echo', { failCode: code, failMessage: `msg ${code}`, tag: 't', payload: new Uint8Array([1, 2, 3]) })
          .then(() => assert.fail('no error'), (e) => e);
        assert.ok(err instanceof PsrpcError, String(err));
        assert.equal(err.code, code);
        assert.equal(err.message, `msg ${code}`);
        assert.equal(err.serverId, server.id);
        assert.equal(err.details.length, 2);
        const reg = createRegistry(StringValueSchema, BytesValueSchema);
        assert.equal(err.details[0].typeUrl, 'type.googleapis.com/google.protobuf.StringValue');
        assert.equal(anyUnpack(err.details[0], reg).value, 't');
        assert.deepEqual([...anyUnpack(err.details[1], reg).value], [1, 2, 3]);
      }
      const plain = await client.call('Echo', { failCode: 'plain' }).catch((e) => e);
      assert.equal(plain.code, Code.Unknown);
      assert.equal(plain.message, 'plain failure');
      const custom = await client.call('Echo', { failCode: 'custom' }).catch((e) => e);
      assert.equal(custom.code, 'my_custom_code');
      assert.equal(custom.message, 'custom é🎉');
      await server.close();
    });

    it('AbortSignal cancels a call', async () => {
      const server = new Server(bus, svc);
      await server.handle('Echo', async (req) => {
        await sleep(req.delayMs);
        return { payload: req.payload };
      });
      const client = new Client(bus, svc, { timeoutMs: 10000 });
      const ac = new AbortController();
      setTimeout(() => ac.abort(), 200);
      const [err, ms, failed] = await timed(client.call('Echo', { delayMs: 2000 }, { signal: ac.signal }));
      assert.ok(failed);
      assert.equal(err.code, Code.Canceled);
      assert.ok(ms >= 150 && ms < 1500 * TIME_FACTOR, `canceled after ${ms} ms`);
      // already aborted: rejected at once
      const err2 = await client.call('Echo', {}, { signal: AbortSignal.abort() }).catch((e) => e);
      assert.equal(err2.code, Code.Canceled);
      // the server still serves
      assert.deepEqual([...(await client.call('Echo', { payload: new Uint8Array([7]) })).payload], [7]);
      await server.close();
    });

    it('deadlines: timeoutMs, ctx.signal at the deadline, nested calls take deadline: ctx', async () => {
      const server = new Server(bus, svc);
      let sawAbort;
      await server.handle('Echo', async (req, ctx) => {
        if (req.tag === 'nested') {
          // the nested call gets at most the parent's deadline
          const c = new Client(bus, svc);
          const e = await c.call('Echo', { delayMs: 3000 }, { deadline: ctx, timeoutMs: 10000 }).catch((x) => x);
          await c.close();
          return { tag: e.code };
        }
        if (req.tag === 'stubborn') {
          await sleep(req.delayMs);
          return {};
        }
        await new Promise((resolve) => {
          ctx.signal.addEventListener('abort', () => { sawAbort = ctx.signal.reason; setTimeout(resolve, 300); }, { once: true });
          setTimeout(resolve, req.delayMs);
        });
        return {};
      });
      const client = new Client(bus, svc);
      const [err, ms] = await timed(client.call('Echo', { delayMs: 1500 }, { timeoutMs: 400 }));
      assert.equal(err.code, Code.DeadlineExceeded);
      assert.equal(err.message, 'request timed out');
      assert.ok(ms >= 350 && ms < 1200 * TIME_FACTOR, `${ms} ms`);
      await sleep(300);
      assert.ok(sawAbort instanceof PsrpcError && sawAbort.code === Code.DeadlineExceeded);
      // deadline as a Date
      const e2 = await client.call('Echo', { delayMs: 1500, tag: 'stubborn' }, { deadline: new Date(Date.now() + 300) }).catch((e) => e);
      assert.equal(e2.code, Code.DeadlineExceeded);
      // nested: the inner call ends with the outer deadline (the outer caller times out too)
      // (the handler's answer may still beat the outer timer: then it says what the inner call saw)
      const [r3, ms3, failed3] = await timed(client.call('Echo', { tag: 'nested' }, { timeoutMs: 600 }));
      if (failed3) assert.equal(r3.code, Code.DeadlineExceeded);
      else assert.equal(r3.tag, Code.DeadlineExceeded);
      assert.ok(ms3 < 1500 * TIME_FACTOR, `${ms3} ms`);
      await server.close();
    });

    it('metadata and client id reach the handler', async () => {
      const server = new Server(bus, svc);
      await server.handle('Echo', (req, ctx) => ({
        metadata: ctx.metadata, tag: ctx.clientId, serverId: ctx.server.id,
      }));
      const client = new Client(bus, svc, { clientId: `CLI_node.${process.pid}-x` });
      const md = { a: '1', 'key with spaces': 'é日本🎉', pipe: 'x|y', empty: '' };
      for (let i = 0; i < 50; i++) md[`k${i}`] = `v${i}`;
      const res = await client.call('Echo', {}, { metadata: md });
      assert.deepEqual({ ...res.metadata }, md);
      assert.equal(res.tag, client.id);
      assert.equal(client.id, `CLI_node.${process.pid}-x`);
      assert.equal(res.serverId, server.id);
      // a Map and pairs work too
      const r2 = await client.call('Echo', {}, { metadata: new Map([['m', 'n']]) });
      assert.deepEqual({ ...r2.metadata }, { m: 'n' });
      await server.close();
    });

    it('affinity selection: best claim, a custom select function, minimum affinity', async () => {
      const servers = [];
      for (const a of [0.2, 0.9, 0.5]) {
        const s = new Server(bus, svc, { serverId: `S_${String(a).replace('.', '_')}_${process.pid}` });
        await s.handle('Claim', (req, ctx) => ({ serverId: ctx.server.id }), { affinity: async () => a });
        servers.push(s);
      }
      if (busName !== 'local') await sleep(100);
      const client = new Client(bus, svc);
      const best = await client.call('Claim', {});
      assert.equal(best.serverId, servers[1].id);
      let seen;
      const low = await client.call('Claim', {}, {
        selection: {
          affinityTimeoutMs: 1000, shortCircuitTimeoutMs: 300,
          select: async (claims) => {
            seen = claims;
            return claims.reduce((x, y) => (y.affinity < x.affinity ? y : x)).serverId;
          },
        },
      });
      assert.equal(low.serverId, servers[0].id);
      assert.equal(seen.length, 3);
      const none = await client.call('Claim', {}, { selection: { minimumAffinity: 0.95, affinityTimeoutMs: 500 } }).catch((e) => e);
      assert.ok(none instanceof PsrpcError);
      assert.equal(none.code, Code.Unavailable);
      // a select function that throws fails the call with its error
      const sel = await client.call('Claim', {}, {
        selection: { affinityTimeoutMs: 500, shortCircuitTimeoutMs: 200, select: () => { throw new PsrpcError(Code.Aborted, 'no thanks'); } },
      }).catch((e) => e);
      assert.equal(sel.code, Code.Aborted);
      assert.equal(sel.message, 'no thanks');
      await Promise.all(servers.map((s) => s.close()));
    });

    it('multi call: every server answers, errors included; break cancels', async () => {
      const servers = [];
      for (let i = 0; i < 3; i++) {
        const s = new Server(bus, svc);
        await s.handle('Fanout', (req, ctx) => {
          if (i === 2) throw new PsrpcError(Code.NotFound, 'member 2 fails');
          return { serverId: ctx.server.id, payload: req.payload };
        });
        servers.push(s);
      }
      if (busName !== 'local') await sleep(100);
      const client = new Client(bus, svc);
      const results = [];
      const [, ms] = await timed((async () => {
        for await (const r of client.multiCall('Fanout', { payload: new Uint8Array([9]) }, { timeoutMs: 700 })) results.push(r);
      })());
      assert.ok(ms >= 600, `ended after ${ms} ms (at its timeout)`);
      assert.equal(results.length, 3);
      const ok = results.filter((r) => r.response);
      const bad = results.filter((r) => r.error);
      assert.equal(ok.length, 2);
      assert.deepEqual(new Set(ok.map((r) => r.response.serverId)), new Set([servers[0].id, servers[1].id]));
      assert.equal(bad[0].error.code, Code.NotFound);
      assert.equal(bad[0].serverId, servers[2].id);
      // break after the first: cancels, no waiting for the timeout
      const [, ms2] = await timed((async () => {
        for await (const r of client.multiCall('Fanout', {}, { timeoutMs: 5000 })) { void r; break; }
      })());
      assert.ok(ms2 < 2000, `${ms2} ms`);
      await Promise.all(servers.map((s) => s.close()));
    });

    it('topics route to the server registered under them', async () => {
      const east = new Server(bus, svc);
      const west = new Server(bus, svc);
      await east.handle('RegionEcho', (req, ctx) => ({ topic: ctx.topics.join(','), serverId: ctx.server.id }), { topics: 'east' });
      await west.handle('RegionEcho', (req, ctx) => ({ topic: ctx.topics.join(','), serverId: ctx.server.id }), { topics: ['é日本🎉'] });
      const client = new Client(bus, svc);
      const a = await client.call('RegionEcho', {}, { topics: 'east' });
      assert.equal(a.serverId, east.id);
      assert.equal(a.topic, 'east');
      const b = await client.call('RegionEcho', {}, { topics: ['é日本🎉'] });
      assert.equal(b.serverId, west.id);
      const c = await client.call('RegionEcho', {}, { topics: 'north', timeoutMs: 1500 }).catch((e) => e);
      assert.equal(c.code, Code.Unavailable);
      await east.close();
      await west.close();
    });

    it('subscriptions: every update in order; break unsubscribes', async () => {
      const server = new Server(bus, updates);
      const client = new Client(bus, updates);
      const sub1 = client.subscribe('Updates');
      const sub2 = client.subscribe('Updates');
      await sub1.ready;
      await sub2.ready;
      if (busName !== 'local') await sleep(100);
      for (let i = 1; i <= 50; i++) server.publish('Updates', { seq: i, serverId: server.id });
      const got = [[], []];
      await Promise.all([sub1, sub2].map(async (sub, k) => {
        for await (const u of sub) {
          assert.equal(u.$typeName, 'psrpc.conformance.Update');
          got[k].push(u.seq);
          if (u.seq === 50) break;
        }
      }));
      const want = Array.from({ length: 50 }, (_, i) => i + 1);
      assert.deepEqual(got[0], want);
      assert.deepEqual(got[1], want);
      assert.equal(bus.stats().requestsInFlight, 0);
      // topics
      const region = client.subscribe('RegionUpdates', { topics: 'x.y' });
      await region.ready;
      if (busName !== 'local') await sleep(100);
      server.publish('RegionUpdates', { seq: 1 }, { topics: 'other' });
      server.publish('RegionUpdates', { seq: 2 }, { topics: 'x.y' });
      for await (const u of region) {
        assert.equal(u.seq, 2);
        break;
      }
      // closing the client ends its subscriptions' iterations
      const open = client.subscribe('Updates');
      await open.ready;
      const ended = (async () => { for await (const u of open) void u; return 'ended'; })();
      await client.close();
      assert.equal(await ended, 'ended');
      await server.close();
    });

    it('streams: 10,000 messages in order each way, close with an error seen by both sides', async () => {
      const server = new Server(bus, svc);
      const ends = [];
      await server.handleStream('Chat', async (stream, ctx) => {
        assert.equal(typeof ctx.clientId, 'string');
        try {
          for await (const msg of stream) {
            if (msg.closeCode) throw new PsrpcError(msg.closeCode, msg.closeMessage);
            await stream.send({ seq: msg.seq + 1, payload: msg.payload });
          }
          ends.push(stream.closeCause?.code ?? 'clean');
        } catch (e) {
          ends.push(e.code);
          throw e;
        }
      });
      const client = new Client(bus, svc, { timeoutMs: 10000 });
      const stream = await client.openStream('Chat', { metadata: { who: 'node' } });
      const N = 10000;
      const received = [];
      const reader = (async () => {
        for await (const m of stream) {
          received.push(m.seq);
          if (received.length === N) break;
        }
      })();
      // sends with up to 64 in flight
      const inflight = new Set();
      for (let i = 1; i <= N; i++) {
        const p = stream.send({ seq: i }).finally(() => inflight.delete(p));
        inflight.add(p);
        if (inflight.size >= 64) await Promise.race(inflight);
      }
      await Promise.all(inflight);
      await reader;
      assert.equal(received.length, N);
      for (let i = 0; i < N; i++) if (received[i] !== i + 2) assert.fail(`message ${i}: seq ${received[i]}`);
      stream.close();
      assert.equal(await stream.closed, undefined);
      await sleep(200);
      assert.deepEqual(ends, ['clean']);

      // the server closes with an error
      const s2 = await client.openStream('Chat');
      await s2.send({ seq: 1, closeCode: Code.ResourceExhausted, closeMessage: 'enough' });
      const cause = await s2.closed;
      assert.equal(cause.code, Code.ResourceExhausted);
      assert.equal(cause.message, 'enough');
      const err = await (async () => { for await (const m of s2) void m; })().then(() => null, (e) => e);
      assert.ok(err === null || err.code === Code.ResourceExhausted);
      await assert.rejects(s2.send({ seq: 2 }), (e) => e instanceof PsrpcError);

      // the client closes with an error
      const s3 = await client.openStream('Chat');
      await s3.send({ seq: 1 });
      // (any code string travels unchanged, as livekit/psrpc carries it)
      s3.close(new PsrpcError('my_stream_code', 'client gives up'));
      assert.equal((await s3.closed).code, 'my_stream_code');
      await sleep(300);
      assert.equal(ends.at(-1), 'my_stream_code');
      await server.close();
    });

    it('close with calls in flight: server close waits (graceful) or not (force); bus close cancels', async () => {
      const server = new Server(bus, svc);
      let aborted = 0;
      await server.handle('Echo', async (req, ctx) => {
        await new Promise((r) => { setTimeout(r, req.delayMs); ctx.signal.addEventListener('abort', () => { aborted++; r(); }); });
        return { tag: 'done' };
      });
      const client = new Client(bus, svc, { timeoutMs: 10000 });
      const p = client.call('Echo', { delayMs: 500 }).catch((e) => e);
      await sleep(150);
      const [, ms] = await timed(server.close());
      assert.equal((await p).tag, 'done');
      assert.ok(ms >= 250, `graceful close took ${ms} ms`);

      const s2 = new Server(bus, svc);
      await s2.handle('Echo', async (req, ctx) => {
        await new Promise((r) => { setTimeout(r, req.delayMs); ctx.signal.addEventListener('abort', () => { aborted++; r(); }); });
        return { tag: 'late' };
      });
      const p2 = client.call('Echo', { delayMs: 3000 }, { timeoutMs: 1500 }).catch((e) => e);
      await sleep(150);
      const [, ms2] = await timed(s2.close({ force: true }));
      assert.ok(ms2 < 1000, `forced close took ${ms2} ms`);
      assert.equal(aborted, 1);
      const e2 = await p2;
      assert.ok(e2 instanceof PsrpcError);

      // a bus closed under a pending call: the call fails with canceled
      const bus2 = await Bus.open(url);
      assert.equal(bus2.state, 'connected');
      const states = [];
      bus2.on('state', (st) => states.push(st));
      const s3 = new Server(bus, svc);
      await s3.handle('Echo', async (req) => { await sleep(req.delayMs); return {}; });
      const c2 = new Client(bus2, svc, { timeoutMs: 10000 });
      const p3 = c2.call('Echo', { delayMs: 2000 }).catch((e) => e);
      await sleep(100);
      await bus2.close();
      assert.deepEqual(states, ['closed']);
      assert.equal(bus2.state, 'closed');
      const e3 = await p3;
      assert.equal(e3.code, Code.Canceled);
      // closed handles refuse
      assert.throws(() => new Client(bus2, svc), (e) => e instanceof PsrpcError && e.code === Code.Canceled);
      await assert.rejects(c2.call('Echo', {}), (e) => e instanceof PsrpcError);
      await client.close();
      await assert.rejects(client.call('Echo', {}), (e) => e instanceof PsrpcError && e.code === Code.Canceled);
      await s3.close();
    });
  });
}
