/**
 * What a run writes, given the disk. The trained model (the size of the source's weight files) must
 * fit, or the run is refused before it trains: a model lost after hours of training is the worst
 * outcome. A 7B model's training checkpoint (float32 weights and both AdamW moments) is ~80 GB, and
 * a save writes the new one beside the old before replacing it: a run with --save-every needs room
 * for two. A run that cannot keep one is refused up front when checkpoints were asked for
 * (--save-every), and otherwise told at the start and at each save that it is skipped; a skipped save
 * never leaves a half-written checkpoint, and the one already there stays (its step is known, so a
 * stop can say where --resume would continue).
 */
import { MlaError } from "../errors.js";
import type { Logger } from "../util/log.js";
import { formatBytes as gb, freeBytes } from "../io/diskRoom.js";
import { checkpointBytes, saveCheckpoint, StateSlots, TrainState } from "./checkpoint.js";

export class CheckpointKeeper {
  private readonly bytes: number;
  /** The step of the checkpoint in OUT/checkpoint now (null: none). */
  step: number | null;

  /**
   * `params`: trainable parameters; `modelBytes`: what the trained model will take (its source's
   * weight files); `resuming`: OUT holds a checkpoint already (its step is set once read).
   */
  constructor(private readonly out: string, private readonly params: number, private readonly modelBytes: number, private readonly log: Logger, private readonly resuming: boolean) {
    this.bytes = checkpointBytes(params);
    this.step = null;
  }

  /** Free bytes in OUT (Infinity where the platform cannot say). */
  private free(): number {
    return freeBytes(this.out) ?? Infinity;
  }

  /** Refuses a run whose model cannot be written, or --save-every without room for its checkpoints; warns a run that will end without one. */
  checkAtStart(saveEvery: number | undefined): void {
    const free = this.free();
    this.log.info(`disk: the trained model takes ${gb(this.modelBytes)}, a training checkpoint ${gb(this.bytes)}${Number.isFinite(free) ? `; ${gb(free)} free in ${this.out}` : ""}`);
    if (free < this.modelBytes) throw new MlaError("IO", `the trained model will take ${gb(this.modelBytes)} (as its source's weight files) and ${this.out} has ${gb(free)} free`, "free disk space or put --out on a larger disk (refused before training, so no work is lost)");
    // The model is written beside the last checkpoint, then the final checkpoint beside that one
    // (a resumed run's first checkpoint is on the disk already).
    const need = this.modelBytes + (!this.resuming && saveEvery ? 2 * this.bytes : this.bytes);
    if (free >= need) return;
    const what = `a training checkpoint of this run takes ${gb(this.bytes)} (float32 weights and AdamW moments of ${this.params.toLocaleString("en-US")} parameters)`;
    if (saveEvery) throw new MlaError("IO", `--save-every ${saveEvery}: ${what}, a save writes the new one beside the last, and the model takes ${gb(this.modelBytes)} (${gb(need)} in all); ${this.out} has ${gb(free)} free`, "free disk space, put --out on a larger disk, or train without --save-every");
    this.log.warn(`${what} and ${this.out} has ${gb(free)} free: the run will write its model but no checkpoint to resume or continue from`);
  }

  /** Saves `state` at its step unless the disk has no room; says which checkpoint stays when it has none. */
  save(state: TrainState, slots: StateSlots, what: string): boolean {
    const free = this.free();
    if (free < this.bytes) {
      const kept = this.step === null ? "" : `; ${this.out}/checkpoint keeps step ${this.step}`;
      this.log.warn(`no ${what} checkpoint: it takes ${gb(this.bytes)} and ${this.out} has ${gb(free)} free${kept}`);
      return false;
    }
    saveCheckpoint(this.out, state, slots);
    this.step = state.step;
    return true;
  }
}
