// Memory: a 100,000-call loop on local:// whose RSS settles (no growth beyond
// 8 MiB between 40,000 calls and the end; figures printed every 10,000 calls).
import { it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

it('RSS settles over 100,000 calls', { timeout: 300000 }, async () => {
  const script = fileURLToPath(new URL('./fixtures/memory.mjs', import.meta.url));
  const { code, out, err } = await new Promise((resolve) => {
    const c = spawn(process.execPath, ['--expose-gc', script, '--calls', '100000'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    c.stdout.on('data', (d) => (out += d));
    c.stderr.on('data', (d) => (err += d));
    c.on('exit', (code) => resolve({ code, out, err }));
  });
  process.stdout.write(out.split('\n').map((l) => `# ${l}`).join('\n') + '\n');
  assert.equal(code, 0, err + out);
  assert.match(out, /calls  100000/);
});
