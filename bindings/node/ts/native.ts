// The native addon (build/Release/psrpc_node.node) and the shapes it speaks.
import * as path from 'node:path';

export interface NativeError {
  status: number;
  code: string;
  message: string;
  details: { typeUrl: string; value: Uint8Array }[];
}

export interface NativeMethod {
  name: string;
  routing: number;
  flags: number;
  outputType?: string;
}

export interface NativeInfo {
  requestId: string;
  clientId: string;
  method: string;
  topics: string[];
  metadata: [string, string][];
  expiryNs: bigint;
  sentAtNs: bigint;
}

export type Box = object & { readonly __box?: never };

export interface Native {
  BusOpen(url: string, opts: object, dispatch: (kind: number, id: number, ...args: any[]) => unknown): Box;
  BusClose(bus: Box): boolean;
  BusRef(bus: Box, ref: boolean): void;
  BusStats(bus: Box): Record<string, number>;
  ClientCreate(bus: Box, service: string, opts: object): [Box, string];
  ClientCall(client: Box, m: NativeMethod, data: Uint8Array, opts: object | undefined, id: number, multi: boolean): number;
  ClientCancel(client: Box, callId: number): void;
  ClientClose(client: Box, id: number): void;
  ClientSubscribe(client: Box, m: NativeMethod, topics: string[], id: number): Box;
  SubClose(sub: Box): void;
  ClientOpenStream(client: Box, m: NativeMethod, opts: object | undefined, id: number): Box;
  StreamSend(stream: Box, data: Uint8Array, timeoutMs: number, id: number, bus: Box): void;
  StreamClose(stream: Box, code: string | null, message: string): void;
  StreamFree(stream: Box): void;
  ServerCreate(bus: Box, service: string, opts: object): [Box, string];
  ServerRegister(server: Box, m: NativeMethod, topics: string[], id: number, affinity: boolean, stream: boolean): void;
  ServerDeregister(server: Box, method: string, topics: string[]): void;
  ServerPublish(server: Box, m: NativeMethod, topics: string[], data: Uint8Array): void;
  ServerClose(server: Box, force: boolean, id: number): void;
  RequestRespond(req: Box, data: Uint8Array): number;
  RequestFail(req: Box, code: string, message: string, details: { typeUrl: string; value: Uint8Array }[]): number;
  RequestClaim(req: Box, affinity: number): number;
  RequestRemainingMs(req: Box): number | undefined;
  SelectionChoose(sel: Box, serverId: string): number;
  SelectionFail(sel: Box, code: string, message: string): number;
  BenchServe(server: Box, m: NativeMethod): void;
  BenchRunC(client: Box, m: NativeMethod, data: Uint8Array, inflight: number, warmupMs: number, durationMs: number): [number, number, number];
  StatusInfo(): { version: string; wireVersion: string; features: Record<string, boolean> };
  ClientSetRetries(client: Box, retries: object | null): void;
  SetLogCallback(dispatch: ((level: number, component: string, message: string) => void) | null, maxLevel: number): void;
}

export const EV = {
  STATE: 1,
  CLOSED: 2,
  CALL: 3,
  RESULT: 4,
  DONE: 5,
  SELECT: 6,
  SUB_MSG: 7,
  READY: 8,
  REQ: 9,
  AFF: 10,
  ST_ACCEPT: 11,
  ST_OPEN: 12,
  ST_MSG: 13,
  ST_CLOSE: 14,
  SEND_DONE: 15,
  HANDLE_CLOSED: 16,
} as const;

function load(): Native {
  const root = path.resolve(__dirname, '..', '..');
  const candidates = [
    process.env.PSRPC_NODE_ADDON,
    path.join(root, 'build', 'Release', 'psrpc_node.node'),
    path.join(root, 'build', 'Debug', 'psrpc_node.node'),
  ].filter((p): p is string => !!p);
  let lastErr: unknown;
  for (const p of candidates) {
    try {
      return require(p) as Native;
    } catch (e) {
      lastErr = e;
    }
  }
  throw new Error(`psrpc: native addon not found (run npm run build in ${root}): ${String(lastErr)}`);
}

export const native: Native = load();
