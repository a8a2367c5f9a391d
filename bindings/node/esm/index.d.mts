export * from '../dist/cjs/index.js';
import * as psrpc from '../dist/cjs/index.js';
export default psrpc;
