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

function resolvable(pkg) {
  try {
    require.resolve(`${pkg}/package.json`, { paths: [here] });
    return true;
  } catch {
    return false;
  }
}

// `npm install /path/to/bindings/node` links this directory into the
// project without installing its dependencies here; node resolves a linked
// package's imports from its real path. Install them here first.
function bootstrap() {
  const need = ['cmake-js', 'node-addon-api', 'node-api-headers', '@bufbuild/protobuf'];
  if (!fs.existsSync(distIndex)) need.push('typescript', '@types/node');
  const missing = need.filter((p) => !resolvable(p));
  if (missing.length === 0) return;
  console.error(`psrpc: installing the build's dependencies in ${here} (missing: ${missing.join(', ')})`);
  const npmCli = process.env.npm_execpath;
  const argv = ['install', '--ignore-scripts', '--no-audit', '--no-fund', '--include=dev', '--no-save'];
  const env = { ...process.env };
  for (const k of Object.keys(env)) if (/^npm_config_(global|prefix|location|save|include|omit|production)/i.test(k)) delete env[k];
  if (npmCli && /\.c?js$/.test(npmCli))
    execFileSync(process.execPath, [npmCli, ...argv], { cwd: here, stdio: 'inherit', env });
  else execFileSync('npm', argv, { cwd: here, stdio: 'inherit', env });
}

if (args.includes('--unpack')) {
  if (fs.existsSync(path.join(here, '..', '..', 'capi', 'psrpc.h')))
    fs.rmSync(path.join(here, 'csrc'), { recursive: true, force: true });
} else if (args.includes('--pack')) {
  buildTs();
  if (fs.existsSync(path.join(here, '..', '..', 'capi', 'psrpc.h'))) copySources();
} else {
  bootstrap();
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
