#!/usr/bin/env node
// The package's build: the native addon (cmake-js, offline: Node-API headers
// from the node-api-headers package, no download) and the TypeScript layer.
//   node scripts/build.js           npm's install script: builds what is missing
//   node scripts/build.js --force   rebuilds both
//   node scripts/build.js --pack    prepack: builds dist/ and copies the libpsrpc
//                                   sources the addon needs into csrc/
//   node scripts/build.js --unpack  postpack: removes csrc/ again (in the tree)
'use strict';
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const here = path.resolve(__dirname, '..');
const args = process.argv.slice(2);
const force = args.includes('--force');
const addon = path.join(here, 'build', 'Release', 'psrpc_node.node');
const distIndex = path.join(here, 'dist', 'cjs', 'index.js');

function run(cmd, argv) {
  execFileSync(cmd, argv, { cwd: here, stdio: 'inherit' });
}

function bin(pkg, rel) {
  const dir = path.dirname(require.resolve(`${pkg}/package.json`, { paths: [here] }));
  return path.join(dir, rel);
}

function buildNative() {
  const jobs = process.env.PSRPC_NODE_JOBS || process.env.CMAKE_BUILD_PARALLEL_LEVEL || '2';
  run(process.execPath, [bin('cmake-js', 'bin/cmake-js'), 'compile', '--directory', here,
    '--out', path.join(here, 'build'), '--parallel', jobs, '--log-level', 'warn']);
}

function buildTs() {
  run(process.execPath, [bin('typescript', 'bin/tsc'), '-p', path.join(here, 'tsconfig.json')]);
}

// The libpsrpc sources the addon's CMake build needs, copied for npm pack.
const CSRC = ['CMakeLists.txt', 'capi', 'impl', 'pkgconfig', 'cmake', 'LICENSE'];
function copySources() {
  const root = path.resolve(here, '..', '..');
  const dst = path.join(here, 'csrc');
  fs.rmSync(dst, { recursive: true, force: true });
  fs.mkdirSync(dst);
  for (const f of CSRC) {
    const src = path.join(root, f);
    if (fs.existsSync(src)) fs.cpSync(src, path.join(dst, f), { recursive: true });
  }
}

if (args.includes('--unpack')) {
  if (fs.existsSync(path.join(here, '..', '..', 'capi', 'psrpc.h')))
    fs.rmSync(path.join(here, 'csrc'), { recursive: true, force: true });
} else if (args.includes('--pack')) {
  buildTs();
  if (fs.existsSync(path.join(here, '..', '..', 'capi', 'psrpc.h'))) copySources();
} else {
  if (force || !fs.existsSync(distIndex)) {
    let haveTsc = true;
    try { bin('typescript', 'bin/tsc'); } catch { haveTsc = false; }
    if (haveTsc) buildTs();
    else if (!fs.existsSync(distIndex)) {
      console.error('psrpc: dist/ is missing and typescript is not installed (npm install --include=dev)');
      process.exit(1);
    }
  }
  if (force || process.env.PSRPC_NODE_REBUILD === '1' || !fs.existsSync(addon)) buildNative();
}
