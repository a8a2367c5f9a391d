// Type-checked by test/types.test.mjs (tsc --noEmit, strict): the typings a
// TypeScript user sees. Lines marked @ts-expect-error must NOT compile.
import { Bus, Client, Server, PsrpcError, Code } from 'psrpc';
import { Counter } from './gen/add_value_pb.js';
const bus = await Bus.open('local://');
const server = new Server(bus, Counter);
let total = 0;
await server.handle('AddValue', async (req, ctx) => {
  const n: number = req.increment;
  const c: string = ctx.clientId;
  return { value: (total += n) + c.length * 0 };
});
const client = new Client(bus, Counter);
const res = await client.call('AddValue', { increment: 2 });
const v: number = res.value;
const r2 = await client.call('addValue', { increment: 3 });
console.log(v, r2.value, Code.NotFound, new PsrpcError(Code.Aborted, 'x').code);
// @ts-expect-error: unknown field
await client.call('AddValue', { incrementt: 2 }).catch(() => 0);
// @ts-expect-error: unknown method
await client.call('Nope', {}).catch(() => 0);
const plain = new Client(bus, 'Plain');
// @ts-expect-error: plain mode takes Uint8Array
await plain.call('X', { a: 1 }).catch(() => 0);
await bus.close();
import { Conformance } from './gen/conformance_pb.js';
const b2 = await Bus.open('local://');
const s2 = new Server(b2, Conformance);
await s2.handleStream('Chat', async (stream, ctx) => {
  for await (const m of stream) await stream.send({ seq: m.seq + 1 });
  void ctx.metadata;
});
const c2 = new Client(b2, Conformance);
const st = await c2.openStream('Chat');
await st.send({ seq: 1 });
for await (const m of st) { const q: number = m.seq; console.log('chat', q); break; }
st.close();
for await (const r of c2.multiCall('Fanout', { payload: new Uint8Array([1]) }, { timeoutMs: 100 })) { const sid: string | undefined = r.response?.serverId; void sid; }
await b2.close();
