/**
 * What finetune() tells a script as it trains, as plain objects (the CLI's progress lines are text for
 * a terminal): onStep after each optimizer step, onValidation after each validation the call runs.
 * The numbers are those of the run's train_log.jsonl lines.
 */

/** onStep's argument: the step just done. */
export interface FinetuneStep {
  /** Steps done so far, earlier sittings of a resumed run included (1 after the first). */
  step: number;
  /** The run's step count. */
  steps: number;
  /** Tokens trained on so far (batch · accum · seq per step). */
  tokens: number;
  /** The step's mean loss per target token (the distillation mix where distill is given). */
  loss: number;
  /** The learning rate the step used. */
  lr: number;
  /** The global gradient norm before clipping. */
  gradNorm: number;
  /** tokens / elapsedSeconds. */
  tokensPerSecond: number;
  /** Training seconds so far (the steps and periodic validations), earlier sittings included. */
  elapsedSeconds: number;
}

/** onValidation's argument: a validation just done. */
export interface FinetuneValidation {
  /** "before": ahead of the first step (a fresh run only); "periodic": after `step` (evalEvery); "final": after the last step. */
  when: "before" | "periodic" | "final";
  /** The steps done when it ran (0 before training). */
  step: number;
  steps: number;
  /** Mean NLL (nats per token) of the held-out tokens. */
  valNll: number;
}

/** The callbacks of FinetuneOptions; either may return a promise, which the run waits for. */
export interface FinetuneCallbacks {
  /**
   * Called after each optimizer step, once the step is done and its train_log.jsonl line written
   * (before the periodic validation or checkpoint due after it). Throwing (or rejecting) stops the run
   * as a stop after that step does (a checkpoint of it is saved, and `resume: true` goes on from
   * there, the step not done again), then finetune() rejects with that error.
   */
  onStep?: (step: FinetuneStep) => void | Promise<void>;
  /**
   * Called after each validation this call runs, with its NLL (not called
   * without held-out tokens: valFraction 0). Throwing stops the run as onStep's throw does: before
   * training nothing was trained, so nothing is saved and a fresh run's --out is left as it found it;
   * after the final validation the model is not written, and `resume: true` does the end again.
   */
  onValidation?: (validation: FinetuneValidation) => void | Promise<void>;
}

/**
 * Calls `callback` with `event`; if it throws, `stop()` first puts the run in a resumable state (its
 * checkpoint), then the callback's error goes on to the caller unchanged.
 */
export async function notify<T>(callback: ((event: T) => void | Promise<void>) | undefined, event: T, stop: () => void): Promise<void> {
  if (!callback) return;
  try {
    await callback(event);
  } catch (e) {
    stop();
    throw e;
  }
}
