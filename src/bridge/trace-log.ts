/**
 * The bridge's trace: each v1 access as one event, with the v2 operations it
 * caused in order. Tracing never changes an access: with no hook nothing is
 * recorded, and a hook that throws is ignored.
 */
import { isVfioError } from '../errors.js';
import type { V1HeaderField } from '../v1/uapi.js';

export type V1Field = V1HeaderField | 'data';

export interface V1TraceEvent {
  op: 'read' | 'write';
  field: V1Field;
  offset: number;
  length: number;
  /** The header value read or written (not for data). */
  value?: number | bigint;
  /** The v2 operations this access caused, in order, e.g. "SET_STATE RUNNING->PRE_COPY = data_fd". */
  v2: string[];
  /** errno name when the access failed. */
  error?: string;
}

export type TraceHook = (event: V1TraceEvent) => void;

export class TraceLog {
  readonly #hook: TraceHook | undefined;
  /** The v2 operations of the header access in progress; null outside one or when nobody listens. */
  #ops: string[] | null = null;

  constructor(hook: TraceHook | undefined) {
    this.#hook = hook;
  }

  /** Hands an event to the hook; a failing hook never fails the access (a v1 write that changed state must not read as failed). */
  emit(event: V1TraceEvent): void {
    try {
      this.#hook?.(event);
    } catch {
      // the hook's owner reports its own failures
    }
  }

  /**
   * Runs one header access and emits it with the operations recorded by
   * call() meanwhile. `fn` returns the access's result and the value to
   * report; a failed access reports the value it was given and its errno.
   */
  async traced<T>(
    op: 'read' | 'write',
    field: V1Field,
    offset: number,
    length: number,
    value: number | bigint | undefined,
    fn: () => Promise<[T, number | bigint]>,
  ): Promise<T> {
    if (!this.#hook) return (await fn())[0];
    this.#ops = [];
    try {
      const [out, v] = await fn();
      this.emit({ op, field, offset, length, value: v, v2: this.#ops });
      return out;
    } catch (e) {
      this.emit({
        op,
        field,
        offset,
        length,
        ...(value !== undefined ? { value } : {}),
        v2: this.#ops,
        error: isVfioError(e) ? e.code : 'EIO',
      });
      throw e;
    } finally {
      this.#ops = null;
    }
  }

  /** Runs one v2 operation, recording it (and its result through `show`, or its errno) for the access in progress. */
  async call<T>(what: string, fn: () => Promise<T>, show?: (r: T) => string): Promise<T> {
    try {
      const r = await fn();
      this.#ops?.push(show ? `${what} = ${show(r)}` : what);
      return r;
    } catch (e) {
      this.#ops?.push(`${what} ! ${isVfioError(e) ? e.code : String(e)}`);
      throw e;
    }
  }
}
