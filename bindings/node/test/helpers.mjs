// Shared by the test files: the buses under test and small utilities.
export const BUSES = [
  ['local', 'local://'],
  ['redis', process.env.PSRPC_TEST_REDIS_URL || 'redis://127.0.0.1:6379'],
  ['nats', process.env.PSRPC_TEST_NATS_URL || 'nats://127.0.0.1:4222'],
];

export const TIME_FACTOR = Number(process.env.PSRPC_TEST_TIME_FACTOR || 1);

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

let n = 0;
/** A service name no other test (or concurrent run) uses. */
export function uniqueName(prefix = 'NodeTest') {
  return `${prefix}_${process.pid}_${Date.now() % 1e6}_${++n}`;
}

/** Times a promise; resolves [value or error, ms]. */
export async function timed(p) {
  const t0 = performance.now();
  try {
    const v = await p;
    return [v, performance.now() - t0, false];
  } catch (e) {
    return [e, performance.now() - t0, true];
  }
}
