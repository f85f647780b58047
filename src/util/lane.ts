/**
 * Jobs run one at a time, in the order asked (each starts when the one before has settled, whether it
 * succeeded or not): for a server's long texts, tokenized one after another in the order they came,
 * whichever thread does it (a text the worker could not take is tokenized on the caller's).
 */
export class Lane {
  private tail: Promise<unknown> = Promise.resolve();

  run<T>(job: () => Promise<T>): Promise<T> {
    const turn = this.tail.then(job);
    this.tail = turn.catch(() => undefined);
    return turn;
  }
}

/**
 * The lane of a process's long texts tokenized in a tokenizer's held worker thread (a server's long
 * prompts, /tokenize and /detokenize: io/heldTokenizerThreads.ts); the worker answers its requests
 * in order too, so a caller outside the lane is only queued behind them.
 */
export const tokenizerWorkers = new Lane();
