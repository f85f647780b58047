/**
 * Overlaps reading and writing of a tensor stream under a memory bound. Reads are issued ahead in
 * the order they will be written, and every byte counts against `budget` from the moment its read
 * starts until its write is on disk. So reading tensor i+1 runs while tensor i is being written,
 * and host memory stays at about `budget` however large the checkpoint is.
 */
export class ByteBudget {
  private used = 0;
  private next = 0;
  private readonly reads = new Map<number, Promise<Uint8Array>>();
  private readonly writes: Promise<void>[] = [];
  /** Seconds spent waiting for reads (read-bound) and for the writer (write-bound). */
  readonly waited = { read: 0, write: 0 };

  /**
   * @param items  in write order: byte size and the read to start (null for data the caller makes
   *               itself, e.g. factored tensors; those still count when appended)
   */
  constructor(
    private readonly items: readonly { bytes: number; read: (() => Promise<Uint8Array>) | null }[],
    private readonly budget: number,
  ) {
    this.fill();
  }

  /** The bytes of item `i` (which must have a read); waits for the writer when the budget is full. */
  async take(i: number): Promise<Uint8Array> {
    while (!this.reads.has(i)) {
      const oldest = this.writes.shift();
      const t = performance.now();
      if (oldest) await oldest;
      else {
        // Nothing is queued: the budget is smaller than this one tensor; read it anyway.
        this.startRead(i);
        this.next = Math.max(this.next, i + 1);
      }
      this.waited.write += (performance.now() - t) / 1000;
    }
    const t = performance.now();
    const bytes = await this.reads.get(i)!;
    this.waited.read += (performance.now() - t) / 1000;
    this.reads.delete(i);
    return bytes;
  }

  /** Registers the write of `bytes` bytes (the promise settles when they are on disk). */
  wrote(bytes: number, done: Promise<void>, made: boolean): void {
    if (made) this.used += bytes; // data made here was never counted by a read
    const settled = done.then(() => {
      this.used -= bytes;
      this.fill();
    });
    settled.catch(() => {}); // the writer's own promise chain reports the failure at close
    this.writes.push(settled);
  }

  /** Settles every read and write still under way (call before abandoning the output on an error). */
  async drain(): Promise<void> {
    await Promise.allSettled([...this.writes, ...this.reads.values()]);
  }

  private fill(): void {
    while (this.next < this.items.length) {
      const it = this.items[this.next]!;
      if (it.read && this.used > 0 && this.used + it.bytes > this.budget) return;
      if (it.read) this.startRead(this.next);
      this.next++;
    }
  }

  private startRead(i: number): void {
    if (this.reads.has(i)) return;
    const it = this.items[i]!;
    this.used += it.bytes;
    const p = it.read!();
    p.catch(() => {}); // awaited in take(); a failed look-ahead read surfaces there
    this.reads.set(i, p);
  }
}
