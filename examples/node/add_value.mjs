#!/usr/bin/env node
// add_value.mjs: the Counter.AddValue service of examples/add_value.proto in
// Node, talking to the C example (examples/add_value.c), the Python example
// (examples/python/add_value.py) and Go services generated from the same
// .proto, over the same Redis or NATS.
//
//     node add_value.mjs [--bus URL]          a server and a client in one process
//                                             (default local://): three calls, each
//                                             value printed, then a graceful close
//     node add_value.mjs --bus URL serve      serve until SIGINT/SIGTERM; prints
//                                             "ready" once the registration is confirmed
//     node add_value.mjs --bus URL call N     one call AddValue(increment=N); prints
//                                             the counter's new value
//
// Needs the binding and @bufbuild/protobuf, and gen/add_value_pb.js, what
// protoc-gen-es makes of add_value.proto: `npm install && npm run gen` in this
// directory (gen runs ../../bindings/node/scripts/gen-pb.sh gen, i.e.
//     protoc -I .. -I ../../tests/interop --es_out=gen \
//         --es_opt=target=js+dts,import_extension=js add_value.proto conformance.proto options.proto
// with protoc from protobuf-compiler).
import { parseArgs } from 'node:util';
import { Bus, Client, Server, PsrpcError } from 'psrpc';
import { Counter } from './gen/add_value_pb.js';

function makeServer(bus) {
  let total = 0;
  const server = new Server(bus, Counter);
  const ready = server.handle('AddValue', async (req) => {
    total += req.increment;
    return { value: total };
  });
  return { server, ready };
}

async function demo(bus) {
  const { server, ready } = makeServer(bus);
  await ready;
  const client = new Client(bus, Counter);
  for (const increment of [1, 2, 3]) {
    const res = await client.call('AddValue', { increment }, { timeoutMs: 5000 });
    console.log(`AddValue(increment=${increment}) -> value=${res.value}`);
  }
  await client.close();
  await server.close(); // graceful: in-flight requests finish
}

async function serve(bus) {
  const { server, ready } = makeServer(bus);
  await ready;
  console.log('ready');
  await new Promise((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  });
  console.error('add_value: stopping');
  await server.close();
}

async function call(bus, n) {
  const client = new Client(bus, Counter);
  const res = await client.call('AddValue', { increment: n }, { timeoutMs: 5000 });
  console.log(res.value);
}

const { values, positionals } = parseArgs({ options: { bus: { type: 'string', default: 'local://' } }, allowPositionals: true });
const [mode, n] = positionals;
if (mode !== undefined && mode !== 'serve' && mode !== 'call') {
  console.error('usage: add_value.mjs [--bus URL] [serve | call N]');
  process.exit(2);
}
if (mode === 'call' && !/^-?\d+$/.test(n ?? '')) {
  console.error('add_value: call needs N');
  process.exit(2);
}
let bus;
try {
  bus = await Bus.open(values.bus);
  if (mode === undefined) await demo(bus);
  else if (mode === 'serve') await serve(bus);
  else await call(bus, Number(n));
} catch (e) {
  console.error(`add_value: ${e instanceof PsrpcError ? `${e.code}: ${e.message}` : e}`);
  process.exitCode = 1;
} finally {
  await bus?.close();
}
