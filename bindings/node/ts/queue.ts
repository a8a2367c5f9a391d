// A small async queue behind the async iterators (multi calls, subscriptions,
// streams).
export class AsyncQueue<T> implements AsyncIterableIterator<T> {
  private items: T[] = [];
  private head = 0;
  private waiters: { resolve: (r: IteratorResult<T>) => void; reject: (e: unknown) => void }[] = [];
  private ended = false;
  private error: unknown = undefined;
  private readonly onReturn: (() => void) | undefined;

  constructor(onReturn?: () => void) {
    this.onReturn = onReturn;
  }

  get size(): number {
    return this.items.length - this.head;
  }

  get done(): boolean {
    return this.ended;
  }

  push(item: T): boolean {
    if (this.ended) return false;
    const w = this.waiters.shift();
    if (w) w.resolve({ value: item, done: false });
    else this.items.push(item);
    return true;
  }

  /** Ends the iteration after the queued items (with error: throws it then). */
  end(error?: unknown): void {
    if (this.ended) return;
    this.ended = true;
    this.error = error;
    if (this.size === 0) this.flushWaiters();
  }

  private flushWaiters(): void {
    const ws = this.waiters;
    this.waiters = [];
    for (const w of ws) {
      if (this.error !== undefined) w.reject(this.error);
      else w.resolve({ value: undefined as any, done: true });
    }
    this.error = this.error !== undefined ? this.error : undefined;
  }

  next(): Promise<IteratorResult<T>> {
    if (this.size > 0) {
      const v = this.items[this.head];
      this.items[this.head++] = undefined as any;
      if (this.head > 1024 && this.head * 2 > this.items.length) {
        this.items = this.items.slice(this.head);
        this.head = 0;
      }
      return Promise.resolve({ value: v, done: false });
    }
    if (this.ended) {
      if (this.error !== undefined) {
        const e = this.error;
        this.error = undefined; // thrown once
        return Promise.reject(e);
      }
      return Promise.resolve({ value: undefined as any, done: true });
    }
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }

  return(): Promise<IteratorResult<T>> {
    if (!this.ended) {
      this.ended = true;
      this.items = [];
      this.head = 0;
      this.onReturn?.();
    }
    this.error = undefined;
    this.flushWaiters();
    return Promise.resolve({ value: undefined as any, done: true });
  }

  [Symbol.asyncIterator](): this {
    return this;
  }
}
