/**
 * Decoding B sequences one token per step, each step recorded once and replayed where the backend can
 * (CUDA graphs). Op by op, a decode step of a 32-layer model is about a thousand kernel launches and
 * more library calls from JavaScript, which bounds decode at small batches; a replay is one launch.
 * Where a step cannot be recorded (a backend without graphs, caches held on the host, attention routes
 * whose shapes follow the sequence lengths, such as float32 caches') the session runs steps op by op
 * and says why.
 */
import { checkCachesArg, checkModelArg } from "../util/argTypes.js";
import { checkOptionTypes, describe } from "../util/optionTypes.js";
import { MlaError } from "../errors.js";
import type { StepGraph } from "../tensor/backend.js";
import type { Tensor } from "../tensor/tensor.js";
import type { DecodeCache } from "./kvCache.js";
import type { LlamaModel } from "./llama.js";

/**
 * Per model, the batch shapes (sequence count and cache dtypes) an op-by-op step has run with, and
 * under which weights and routes. Such a step built all that a recording of that shape reuses (absorbed
 * projections, bf16 copies, kernel attributes), so a later session of the same shape, as a server makes
 * at every change of its batch, records its first step instead of running it op by op. Bounded by the
 * shapes seen (at most one entry per batch size and dtype mix).
 */
const warmShapes = new WeakMap<LlamaModel, Map<string, string>>();

export interface DecodeSessionOptions {
  /** Record and replay steps where the backend can (default: yes, unless MHA2MLA_DECODE_GRAPHS=0). */
  graphs?: boolean;
}

export class DecodeSession {
  private graph: StepGraph | null = null;
  /** The buffers the graph was recorded over (a cache that moved invalidates it). */
  private recordedOver: readonly Tensor[] = [];
  /** The last step's logits: the graph's output, or an op-by-op result this session frees. */
  private logits: Tensor | null = null;
  /**
   * The weights' version the last op-by-op or recorded step ran with (it built what a recording reuses,
   * and a graph holds the weights it was recorded with); -1: none yet.
   */
  private warmWeights = -1;
  /**
   * The backend's routes (Backend.routes) the last step ran with: a graph keeps the kernels it was
   * recorded with, so a route switched mid-session (e.g. MHA2MLA_MHA_DECODE) means one op-by-op step,
   * which builds what the new route reuses, and a new recording.
   */
  private warmRoutes: string | undefined;
  private refusal: string | undefined;
  /**
   * The refusal came from a recording (under warmRoutes), not from the start: another route may record
   * (MHA2MLA_MHA_DECODE=cublas refuses, the kernel records), so it holds only while the routes stay.
   */
  private recordingRefused = false;
  /** This batch's shape, the key of warmShapes. */
  private readonly shape: string;

  /** `caches` [B]: distinct caches holding each sequence so far (prefilled); they advance with every step. */
  constructor(readonly model: LlamaModel, readonly caches: readonly DecodeCache[], opts: DecodeSessionOptions = {}) {
    checkModelArg("new DecodeSession()", model);
    checkCachesArg("new DecodeSession()", caches, "make one per sequence with model.newCache(dtype) and prefill it: model.forward(prompt, cache)");
    if (caches.length === 0) throw new MlaError("BAD_ARGUMENT", "a decode session needs at least one cache", "prefill a cache per sequence first (model.forward(prompt, cache))");
    // From JavaScript: { graph: false } was ignored (graphs stayed on), anything but a cache failed at the first step.
    checkOptionTypes<DecodeSessionOptions>("new DecodeSession()", opts, { graphs: "boolean" });
    if (new Set(caches).size !== caches.length) throw new MlaError("BAD_ARGUMENT", "a decode session got the same cache twice", "each sequence needs its own cache (clone() copies one)");
    this.shape = `${caches.length}×${caches.map((c) => c.dtype).join(",")}`;
    const backend = model.backend;
    if (!(opts.graphs ?? process.env["MHA2MLA_DECODE_GRAPHS"] !== "0")) this.refusal = "recording was turned off (graphs: false or MHA2MLA_DECODE_GRAPHS=0)";
    else if (!backend.captureStep) this.refusal = `the ${backend.name} backend has no step recording`;
    else if (model.config.attention.kind === "deepseek") this.refusal = "deepseek_v3 layers gather columns through host tables, which a recording cannot refresh";
    else if (caches.some((c) => c.replayBuffers() === null)) this.refusal = "a cache's rows are held on the host, not on the device";
  }

  /** Whether the last step was a replay. */
  get graphed(): boolean {
    return this.graph !== null;
  }

  /** Why steps run op by op (undefined while recording can still happen; a refused route may change). */
  get why(): string | undefined {
    return this.refusal;
  }

  /**
   * Logits [B, V] of the token after `ids` [B] (each sequence's next token, in the order of the
   * caches). Owned by the session: valid until the next step or dispose().
   */
  step(ids: Int32Array): Tensor {
    const B = this.caches.length, V = this.model.config.vocabSize;
    if (!(ids instanceof Int32Array || Array.isArray(ids))) throw new MlaError("BAD_ARGUMENT", `a decode step got ${describe(ids)}, not the next token ids`, `pass an Int32Array of one next token per sequence, e.g. step(Int32Array.of(id))`);
    if (ids.length !== B) throw new MlaError("BAD_ARGUMENT", `a decode step got ${ids.length} tokens for ${B} sequences`, "pass one next token per sequence, in the order of the caches");
    // A replay reads ids on the device without the host check an op-by-op embedding makes.
    for (let b = 0; b < B; b++) {
      if (!Number.isInteger(ids[b])) throw new MlaError("BAD_ARGUMENT", `token id ${ids[b]} of sequence ${b} is not a whole number`, "pass the ids the tokenizer or the last step picked");
      if (!(ids[b]! >= 0 && ids[b]! < V)) throw new MlaError("BAD_ARGUMENT", `token id ${ids[b]} of sequence ${b} is outside the vocabulary of ${V}`, "the tokenizer and the model do not match");
    }
    const positions = Int32Array.from(this.caches, (c) => c.length);
    // A graph is recorded under warmRoutes (a recording step is warm), and replays leave them as they are.
    const routes = this.model.backend.routes?.();
    if (this.graph && (!this.replayable() || routes !== this.warmRoutes)) this.dropGraph(); // a cache moved, has no room for this step, or a route changed
    if (this.recordingRefused && routes !== this.warmRoutes) {
      this.refusal = undefined;
      this.recordingRefused = false;
    }
    if (this.graph) {
      this.graph.launch(ids, positions);
      for (const c of this.caches) c.commitStep();
      return this.logits!;
    }
    this.logits?.dispose();
    this.logits = null;
    // The first step of a shape, and the first after the weights or routes change, runs op by op: it
    // builds what every later step reuses (absorbed projections, kernel attributes), none of which a
    // recording may allocate. A step this session ran, or one of another session of this shape, did.
    const version = this.model.weightsVersion;
    const warmHere = this.warmWeights === version && this.warmRoutes === routes;
    const warm = warmHere || warmShapes.get(this.model)?.get(this.shape) === `${version}|${routes}`;
    if (warm && this.refusal === undefined && this.replayable()) this.logits = this.record(ids, positions, warmHere);
    if (!this.logits) {
      // A step that fails part-way (out of memory at layer k) has appended rows to the layers before k:
      // undone, so a caller that steps again writes and reads the rows it should.
      const lengths = this.caches.map((c) => c.length);
      try {
        this.logits = this.model.decodeBatch(ids, this.caches);
      } catch (e) {
        this.caches.forEach((c, i) => c.truncate(lengths[i]!));
        throw e;
      }
      let shapes = warmShapes.get(this.model);
      if (!shapes) warmShapes.set(this.model, (shapes = new Map()));
      shapes.set(this.shape, `${version}|${routes}`);
    }
    this.warmWeights = version;
    this.warmRoutes = routes;
    return this.logits;
  }

  /** Frees the recording and the last logits; the caches stay the caller's. */
  dispose(): void {
    this.dropGraph();
    this.logits?.dispose();
    this.logits = null;
  }

  /**
   * The step recorded and run, or null (the step not run, the caches as they were) when it cannot be.
   * `warmHere`: this session ran the step before; a refusal of a session's first step (warm only from
   * another session) is not kept, so its next step, warm by its own, tries once more.
   */
  private record(ids: Int32Array, positions: Int32Array, warmHere: boolean): Tensor | null {
    const lengths = this.caches.map((c) => c.length);
    const buffers = this.buffers();
    try {
      const { result, graph } = this.model.backend.captureStep!(ids, positions, () => this.model.decodeBatch(ids, this.caches));
      this.graph = graph;
      this.recordedOver = buffers;
      return result;
    } catch (e) {
      // The recording ran (some of) the step's host bookkeeping but no device work: undo it, and run
      // op by op from now on (out of memory while recording too: the op-by-op step needs less).
      this.caches.forEach((c, i) => c.truncate(lengths[i]!));
      if (!(e instanceof MlaError)) throw e;
      if (!warmHere) return null;
      this.refusal = e.message.split("\n")[0];
      this.recordingRefused = true;
      return null;
    }
  }

  /** Every cache has room for one more token without moving, in the buffers the graph was recorded over. */
  private replayable(): boolean {
    if (this.caches.some((c) => c.capacity < c.length + 1)) return false;
    if (!this.graph) return true;
    if (this.warmWeights !== this.model.weightsVersion) return false; // fine-tuned meanwhile: re-record
    const now = this.buffers();
    return now.length === this.recordedOver.length && now.every((t, i) => t === this.recordedOver[i]);
  }

  private buffers(): Tensor[] {
    return this.caches.flatMap((c) => [...(c.replayBuffers() ?? [])]);
  }

  private dropGraph(): void {
    this.graph?.dispose();
    this.graph = null;
    // The logits were the graph's output: gone with it.
    this.logits = null;
    this.recordedOver = [];
  }
}
