/**
 * Jobs run one at a time, in the order asked (each starts when the one before has settled, whether it
 * succeeded or not): for work that starts worker threads holding a whole tokenizer each, so that a
 * burst of requests does not load one copy per request.
 */
export class Lane {
  private tail: Promise<unknown> = Promise.resolve();

  run<T>(job: () => Promise<T>): Promise<T> {
    const turn = this.tail.then(job);
    this.tail = turn.catch(() => undefined);
    return turn;
  }
}

/** The lane of a process's tokenizer worker threads started for single requests (a server's long /tokenize and /detokenize). */
export const tokenizerWorkers = new Lane();
