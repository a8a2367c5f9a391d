// examples/node/add_value.mjs: alone (local://), and over Redis and NATS as a
// server called from other processes: the Node example itself and, when the
// C example is built (build/examples/add_value of this tree, or
// $PSRPC_C_ADD_VALUE), the C example in both directions.
import { describe, it, before } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { existsSync, symlinkSync, mkdirSync, rmSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { BUSES } from './helpers.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..', '..', '..');
const exampleDir = path.join(root, 'examples', 'node');
const example = path.join(exampleDir, 'add_value.mjs');
const cExample = process.env.PSRPC_C_ADD_VALUE || path.join(root, 'build', 'examples', 'add_value');

function run(cmd, args, timeoutMs = 20000) {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    const t = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('exit', (code) => {
      clearTimeout(t);
      resolve({ code, out, err });
    });
  });
}

/** Starts a `serve` process; resolves once it printed "ready". */
function serve(cmd, args) {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stderr.on('data', (d) => (err += d));
    const t = setTimeout(() => { child.kill('SIGKILL'); reject(new Error(`not ready: ${err}`)); }, 20000);
    child.stdout.on('data', (d) => {
      out += d;
      if (/^ready$/m.test(out)) {
        clearTimeout(t);
        resolve({
          stop: () => new Promise((res) => { child.on('exit', (code) => res({ code, err })); child.kill('SIGTERM'); }),
        });
      }
    });
    child.on('exit', (code) => reject(new Error(`serve exited ${code}: ${err}`)));
  });
}

before(() => {
  // the example imports 'psrpc' and '@bufbuild/protobuf': link this package
  // and its dependency into examples/node/node_modules (what `npm install`
  // there does, without touching the network)
  const nm = path.join(exampleDir, 'node_modules');
  mkdirSync(path.join(nm, '@bufbuild'), { recursive: true });
  for (const [name, target] of [['psrpc', path.resolve(here, '..')],
    [path.join('@bufbuild', 'protobuf'), path.resolve(here, '..', 'node_modules', '@bufbuild', 'protobuf')]]) {
    const p = path.join(nm, name);
    rmSync(p, { recursive: true, force: true });
    symlinkSync(target, p);
  }
});

describe('examples/node/add_value.mjs', () => {
  it('alone on local://: 1, 3, 6', async () => {
    const r = await run(process.execPath, [example]);
    assert.equal(r.code, 0, r.err);
    assert.equal(r.out, 'AddValue(increment=1) -> value=1\nAddValue(increment=2) -> value=3\nAddValue(increment=3) -> value=6\n');
  });
  for (const [busName, url] of BUSES.slice(1)) {
    it(`serve and call from other processes over ${busName}`, async () => {
      const s = await serve(process.execPath, [example, '--bus', url, 'serve']);
      const a = await run(process.execPath, [example, '--bus', url, 'call', '5']);
      const b = await run(process.execPath, [example, '--bus', url, 'call', '7']);
      const { code } = await s.stop();
      assert.equal(a.out, '5\n', a.err);
      assert.equal(b.out, '12\n', b.err);
      assert.equal(code, 0);
    });
    it(`interoperates with the C example over ${busName}`, { skip: !existsSync(cExample) && `no C example at ${cExample}` }, async () => {
      // C client -> Node server
      const s = await serve(process.execPath, [example, '--bus', url, 'serve']);
      const a = await run(cExample, ['--bus', url, 'call', '4']);
      const { code } = await s.stop();
      assert.equal(a.out.trim().split('\n').at(-1), '4', a.err);
      assert.equal(code, 0);
      // Node client -> C server
      const c = await serve(cExample, ['--bus', url, 'serve']);
      const b = await run(process.execPath, [example, '--bus', url, 'call', '9']);
      await c.stop();
      assert.equal(b.out, '9\n', b.err);
    });
  }
});
