// Compile-time mapping from a protoc-gen-es GenService to its methods' message types.
import type { DescMessage, MessageInitShape, MessageShape } from '@bufbuild/protobuf';

type MethodsOf<S> = S extends { kind: 'service'; method: infer M } ? M : never;
type Key<S, N> = N extends keyof MethodsOf<S>
  ? N
  : Uncapitalize<N & string> extends keyof MethodsOf<S>
    ? Uncapitalize<N & string>
    : never;

/** Method names of a service: the wire name ("AddValue") or the generated local name ("addValue"). */
export type MethodName<S> = [MethodsOf<S>] extends [never]
  ? string
  : (keyof MethodsOf<S> & string) | Capitalize<keyof MethodsOf<S> & string>;

/** What a call takes: the input message (or its init object); Uint8Array for a service given by name. */
export type RequestOf<S, N> = S extends string
  ? Uint8Array
  : [MethodsOf<S>] extends [never]
    ? any
    : MethodsOf<S>[Key<S, N>] extends { input: infer I extends DescMessage }
      ? MessageInitShape<I>
      : any;

/** What a call returns: the output message; Uint8Array for a service given by name. */
export type ResponseOf<S, N> = S extends string
  ? Uint8Array
  : [MethodsOf<S>] extends [never]
    ? any
    : MethodsOf<S>[Key<S, N>] extends { output: infer O extends DescMessage }
      ? MessageShape<O>
      : any;

/** What a handler receives (the decoded input message). */
export type HandlerRequestOf<S, N> = S extends string
  ? Uint8Array
  : [MethodsOf<S>] extends [never]
    ? any
    : MethodsOf<S>[Key<S, N>] extends { input: infer I extends DescMessage }
      ? MessageShape<I>
      : any;

/** What a handler answers (the output message or its init object). */
export type HandlerResponseOf<S, N> = S extends string
  ? Uint8Array
  : [MethodsOf<S>] extends [never]
    ? any
    : MethodsOf<S>[Key<S, N>] extends { output: infer O extends DescMessage }
      ? MessageInitShape<O>
      : any;
