/**
 * Llama-family decoder forward: RMSNorm → attention (rotate-half RoPE, GQA, optional sliding window)
 * → residual → RMSNorm → SwiGLU MLP → residual; final RMSNorm and LM head. Optionally extends a KV
 * cache so that generation feeds one token at a time.
 */
import path from "node:path";
import { Checkpoint } from "../io/checkpoint.js";
import { readHfConfig } from "../io/hfConfig.js";
import { resolveModel } from "../io/modelDir.js";
import { loadTokenizer, TextTokenizer } from "../io/tokenizer.js";
import { referenceBackend } from "../backends/reference/index.js";
import { PRODUCTS, type Backend } from "../tensor/backend.js";
import type { FloatArray, Tensor } from "../tensor/tensor.js";
import { attentionInvFreq, ModelConfig } from "./config.js";
import { LlamaWeights, loadLlamaWeights, WEIGHT_STORAGES, WeightStorage, namedTensors } from "./weights.js";
import { checkOptionTypes, type OptionKinds } from "../util/optionTypes.js";
import { checkCacheArg, checkCachesArg, checkConfigArg, tokenIdsArg } from "../util/argTypes.js";
import { checkBackendArg, shown } from "../util/numericArgs.js";
import { CacheOptions, DecodeCache, KvCache, LatentCache } from "./kvCache.js";
import { AttentionMode, mhaAttention, mhaDecodeBatch } from "./attention/mha.js";
import { MlaError } from "../errors.js";
import { MlaBlock } from "./attention/mla.js";
import { deepseekAttention, DeepseekDecoder } from "./attention/deepseek.js";
import { Node, Ops, Tape } from "../tensor/autograd.js";
import { ResidualRecomputeOps } from "./residualRecompute.js";
import { AttentionNodes, ParamNodes, paramNodes } from "./params.js";
import { rowRange } from "../tensor/rows.js";
import { tokenLogprobsFromLoss, type TokenLogprobs } from "./sampling.js";
import { checkKvCacheDtype, type KvCacheDtype } from "./kvQuant.js";

export interface ForwardOptions {
  /** Called with each layer's attention input [T, D] (after input_layernorm), for calibration. */
  onAttentionInput?: (layer: number, x: Tensor) => void;
  /** MLA only: force (true) or forbid (false) the absorbed decode path; default: absorbed when the cache holds tokens. */
  absorb?: boolean;
  /**
   * `ids` holds this many sequences of equal length, back to back, each starting at position 0 and
   * attending only to itself (a training micro-batch); no cache. Default 1.
   */
  sequences?: number;
  /** Mixed precision: attention GEMMs may take bf16 inputs (f32 accumulation) on backends that can. */
  bf16?: boolean;
  /**
   * Without a cache (evaluation): attend to the keys and values (MLA: rope keys and latents) as a
   * decode cache of this type would return them, so perplexity shows the cache's quantization.
   * Inference only. With a cache, the cache's own dtype rules.
   */
  kvCache?: KvCacheDtype;
  /**
   * Training only: keep each layer's input, not its intermediates, and recompute the layer during
   * the backward (activation checkpointing: about one layer of activations instead of all of them).
   */
  checkpoint?: boolean;
  /**
   * With `checkpoint`: each layer also keeps its mid-layer residual sum h + attention [T, D] (4 bytes
   * × hidden per token and layer), so the recompute skips o_proj as well as down
   * (ResidualRecomputeOps). Default true; false where memory is short: down is skipped either way,
   * its sum being the layer's output, which the next layer keeps as its input.
   */
  checkpointKeepsMid?: boolean;
}

/** Input gradients that checkpointed layers allocated: each is freed once the layer below has used it. */
const inputGradients = new WeakSet<Tensor>();

interface LayerContext {
  /** The token ids of the rows (EG-MLA gates each token's latent by its id). */
  ids: Int32Array;
  positions: Int32Array;
  batch: readonly DecodeCache[] | null;
  single: DecodeCache | undefined;
  mode: AttentionMode;
  opts: ForwardOptions;
}

/** The context of one sequence's tokens ids [T] at positions 0…T−1, without a cache (a layer run alone). */
function oneSequence(ids: Int32Array): LayerContext {
  const positions = Int32Array.from({ length: ids.length }, (_, i) => i);
  return { ids, positions, batch: null, single: undefined, mode: { batch: 1, bf16: false }, opts: { absorb: false } };
}

export class LlamaModel {
  readonly invFreq: Float64Array;

  private readonly mla: MlaBlock[] | null;
  private readonly deepseek: DeepseekDecoder[] | null;
  private constants: ParamNodes | null = null;
  private readonly identities = new Map<number, Tensor>();

  constructor(readonly config: ModelConfig, readonly weights: LlamaWeights, readonly backend: Backend) {
    // From a script (loadModel passes what it built): a folder's name failed as "reading 'kind'", and
    // missing weights or backend made a model whose first forward failed far from the cause.
    checkConfigArg("new LlamaModel()", config);
    const layers = (weights as { layers?: unknown } | null)?.layers;
    if (!(Array.isArray(layers) && layers.length === config.layers)) throw new MlaError("BAD_ARGUMENT", `new LlamaModel(): the weights are ${Array.isArray(layers) ? `weights of ${layers.length} layers, not the config's ${config.layers}` : `${shown(weights)}, not a model's weights`}`, "load a model with loadModel(dir), whose .model is a LlamaModel");
    checkBackendArg("new LlamaModel()", backend);
    this.invFreq = attentionInvFreq(config);
    this.mla = config.attention.kind === "mla" ? weights.layers.map((lw, i) => new MlaBlock(backend, config, lw.attn as never, this.invFreq, i)) : null;
    this.deepseek = config.attention.kind === "deepseek" ? weights.layers.map((lw, i) => new DeepseekDecoder(backend, config, lw.attn as never, this.invFreq, i)) : null;
  }

  /** Whether the linear weights are held in bf16 (a bf16 checkpoint on a backend that keeps bf16: CUDA). */
  get bf16Weights(): boolean {
    return this.weights.layers[0]?.gate.dtype === "bf16";
  }

  /** Whether every weight a product reads is bf16 (every 2-D tensor but an untied embedding, a lookup table). */
  private get productsBf16(): boolean {
    this.allProductsBf16 ??= namedTensors(this.config, this.weights).every(([name, t]) => t.shape.length !== 2 || t.dtype === "bf16" || (name === "model.embed_tokens.weight" && !this.config.tieEmbeddings));
    return this.allProductsBf16;
  }
  private allProductsBf16: boolean | undefined;

  /** An empty decode cache of the right kind for this model (opts.capacity: tokens to allocate room for now). */
  newCache(dtype: KvCacheDtype = "f32", opts: CacheOptions = {}): DecodeCache {
    checkKvCacheDtype(dtype);
    // From JavaScript: { capacty: 2048 } was ignored (a cache that grows), "2048" refused as "got 2048".
    checkOptionTypes<CacheOptions>("newCache()", opts, { capacity: "number" });
    const c = this.config;
    const a = c.attention;
    if (a.kind === "deepseek") return new LatentCache(this.backend, 1, Array.from({ length: c.layers }, () => ({ ropeDims: a.ropeDim, latentDim: a.kvLoraRank })), dtype, opts);
    return a.kind === "mla" ? new LatentCache(this.backend, c.kvHeads, a.splits.map((s) => ({ ropeDims: 2 * s.ropePairs, latentDim: s.latentDim })), dtype, opts) : new KvCache(this.backend, c.layers, c.kvHeads, c.headDim, dtype, opts);
  }

  /**
   * Logits [T, V] for `ids` [T] placed at positions cache.length … cache.length+T−1. Without a cache
   * the sequence starts at position 0.
   */
  forward(ids: Int32Array, cache?: DecodeCache, opts: ForwardOptions = {}): Tensor {
    // From a script: anything but a cache failed inside as "Cannot read properties of undefined".
    checkCacheArg("forward()", cache);
    return this.logits(tokenIdsArg("forward()", ids), cache, opts);
  }

  /** The LM head over the final hidden states, which are freed at once (a GPU backend would hold them until the collector ran). */
  private logits(ids: Int32Array, cache?: DecodeCache | readonly DecodeCache[], opts: ForwardOptions = {}): Tensor {
    const ops = new Ops(this.backend, null);
    const P = this.constantNodes(ops);
    const h = this.hidden(ops, P, ids, cache, opts).value;
    const y = this.backend.linear(h, P.lmHead.value, null);
    h.dispose();
    return y;
  }

  /**
   * Logits [1, V] of the token after `ids` [T], which go into `cache` at positions cache.length …:
   * a prompt's prefill, where only the last row's logits are wanted (a 2k-token prompt of a 128k
   * vocabulary would otherwise make 1 GB of float32 logits to read one row). `opts.absorb`: as forward's.
   */
  prefill(ids: Int32Array, cache: DecodeCache, opts: Pick<ForwardOptions, "absorb"> = {}): Tensor {
    ids = tokenIdsArg("prefill()", ids);
    const ops = new Ops(this.backend, null);
    const P = this.constantNodes(ops);
    const h = this.hidden(ops, P, ids, cache, opts).value;
    const last = rowRange(this.backend, h, ids.length - 1, 1);
    const logits = this.backend.linear(last, P.lmHead.value, null);
    if (last !== h) last.dispose();
    h.dispose();
    return logits;
  }

  /**
   * prefill, also scoring the prompt: for each row i of `ids` [T] whose next token `next[i]` is known
   * (≥ 0; −1 where it is not, e.g. the prompt's last row), the log-probability of that token and of
   * the `top` most likely ones after ids[0…i] (what a completion's `echo` with logprobs reports, and
   * lm-eval's log-likelihood tasks read). Returns the last row's logits [V] and one entry per row (null
   * where next is −1). The LM head runs over the rows from the first scored one to the last, in row
   * chunks, so a long prompt of a large vocabulary never holds all its logits at once.
   */
  prefillScored(ids: Int32Array, cache: DecodeCache, next: Int32Array, top: number, opts: Pick<ForwardOptions, "absorb"> = {}): { logits: FloatArray; scored: (TokenLogprobs | null)[] } {
    if (next.length !== ids.length) throw new MlaError("BAD_ARGUMENT", `prefillScored: ${next.length} next tokens for ${ids.length} ids`, "pass one next token (or −1) per id");
    const b = this.backend;
    const ops = new Ops(b, null);
    const P = this.constantNodes(ops);
    const h = this.hidden(ops, P, ids, cache, opts).value;
    const V = this.config.vocabSize, T = ids.length;
    const chunkRows = Math.max(1, Math.floor(2 ** 24 / V));
    // Rows before the first scored one need no logits (a context whose continuation alone is scored).
    let first = next.findIndex((t) => t >= 0);
    if (first < 0) first = T - 1;
    const scored: (TokenLogprobs | null)[] = new Array<null>(first).fill(null);
    let last: FloatArray | null = null;
    try {
      for (let r0 = first; r0 < T; r0 += chunkRows) {
        const rows = Math.min(chunkRows, T - r0);
        const hc = rowRange(b, h, r0, rows);
        const lt = b.linear(hc, P.lmHead.value, null);
        if (hc !== h) hc.dispose();
        try {
          if (b.rowLogprobs) {
            // On the device: only each row's numbers come back, and the last row's logits.
            const r = b.rowLogprobs(lt, next.subarray(r0, r0 + rows), top);
            for (let j = 0; j < rows; j++)
              scored.push(next[r0 + j]! < 0 ? null : { logprob: r.logprob[j]!, top: Array.from({ length: top }, (_, k) => ({ id: r.topIds[j * top + k]!, logprob: r.topLogprobs[j * top + k]! })) });
            if (r0 + rows === T) {
              const tail = rowRange(b, lt, rows - 1, 1);
              last = tail.toArray().slice();
              if (tail !== lt) tail.dispose();
            }
          } else {
            const logits = lt.toArray();
            // The log-softmax's normalizer from the backend's cross-entropy (native code where it has it, and
            // on the device); rows without a target score token 0 there, unread.
            const losses = b.crossEntropy(lt, Int32Array.from({ length: rows }, (_, j) => Math.max(0, next[r0 + j]!)));
            for (let j = 0; j < rows; j++) {
              const row = logits.subarray(j * V, (j + 1) * V);
              const t = next[r0 + j]!;
              scored.push(t >= 0 ? tokenLogprobsFromLoss(row, t, top, losses[j]!) : null);
              if (r0 + j === T - 1) last = row.slice();
            }
          }
        } finally {
          lt.dispose();
        }
      }
    } finally {
      h.dispose();
    }
    return { logits: last!, scored };
  }

  /** Puts `ids` [T] into `cache` at positions cache.length … without computing any logits (a shared beginning prefilled once). */
  fill(ids: Int32Array, cache: DecodeCache, opts: Pick<ForwardOptions, "absorb"> = {}): void {
    const ops = new Ops(this.backend, null);
    this.hidden(ops, this.constantNodes(ops), ids, cache, opts).value.dispose();
  }

  /**
   * One decode step of B sequences at once: `ids` [B] holds the next token of each, `caches` [B]
   * their caches (distinct, any lengths). Returns logits [B, V]. Every weight is read once per step
   * for the whole batch, which is what makes decode of many sequences fast; attention runs per
   * sequence on its own cache. Inference only.
   */
  decodeBatch(ids: Int32Array, caches: readonly DecodeCache[]): Tensor {
    checkCachesArg("decodeBatch()", caches, "pass one cache per sequence, each made with model.newCache(dtype) and prefilled: [cache, cache.clone()]");
    ids = tokenIdsArg("decodeBatch()", ids);
    if (ids.length !== caches.length || ids.length === 0)
      throw new MlaError("BAD_ARGUMENT", `decodeBatch: ${ids.length} tokens for ${caches.length} caches`, "pass one next token per sequence, in the order of the caches");
    if (new Set(caches).size !== caches.length) throw new MlaError("BAD_ARGUMENT", "decodeBatch: the same cache appears twice", "each sequence needs its own cache (clone() copies one)");
    const b = this.backend;
    const step = () => this.logits(ids, caches);
    // With bf16 weights every product rounds its input to bf16 anyway. In a bf16Inputs arena the norms
    // and SwiGLU write that rounding directly and each other input is rounded once for all the products
    // that read it: a batch-8 step of the llama2-7b shape drops from ten rounding launches per layer to
    // three (the values are the same). Nothing in the step writes a tensor after making it: the caches'
    // rows are made outside arenas. Only where every product weight is bf16: an f32 one (an f32 LM head
    // beside bf16 layers) would read its input rounded. MHA2MLA_DECODE_BF16_INPUTS=0 turns it off (the A/B).
    if (!b.arena || !this.productsBf16 || process.env["MHA2MLA_DECODE_BF16_INPUTS"] === "0") return step();
    return b.arena(step, { bf16Inputs: true, keep: (y) => [y] });
  }

  /** The same forward as graph ops over weight nodes `P` (trainable leaves when `ops` has a tape). */
  graph(ops: Ops, P: ParamNodes, ids: Int32Array, cache?: DecodeCache | readonly DecodeCache[], opts: ForwardOptions = {}): Node {
    return ops.linear(this.hidden(ops, P, ids, cache, opts), P.lmHead, null);
  }

  /** The final-norm hidden states [T, D] that the LM head turns into logits (training computes the loss from them in row chunks). */
  hidden(ops: Ops, P: ParamNodes, ids: Int32Array, cache?: DecodeCache | readonly DecodeCache[], opts: ForwardOptions = {}): Node {
    this.checkLive();
    const c = this.config;
    // One new token on a filled cache, inference, absorbed: the batched decode path with B = 1 (its
    // backends append and attend in one call each, reading the cache buffers without views).
    const oneStep = !Array.isArray(cache) && cache && cache.length > 0 && ids.length === 1 && !ops.tape && opts.absorb !== false;
    const batch = Array.isArray(cache) ? (cache as readonly DecodeCache[]) : oneStep ? [cache as DecodeCache] : null;
    const single = batch ? undefined : (cache as DecodeCache | undefined);
    const start = single?.length ?? 0;
    const sequences = opts.sequences ?? 1;
    if (sequences > 1 && (cache || ids.length % sequences !== 0))
      throw new MlaError("BAD_ARGUMENT", `graph: ${ids.length} tokens cannot be ${sequences} sequences${cache ? " with a cache" : ""}`, "pass equal-length sequences back to back, without a cache");
    const seqLen = ids.length / sequences;
    const positions = batch ? Int32Array.from(batch, (x) => x.length) : new Int32Array(ids.length);
    if (!batch) for (let i = 0; i < ids.length; i++) positions[i] = start + (i % seqLen);
    if (opts.kvCache !== undefined) checkKvCacheDtype(opts.kvCache);
    if (opts.kvCache && opts.kvCache !== "f32" && ops.tape) throw new MlaError("BAD_ARGUMENT", "a quantized KV cache is for inference", "fine-tune without --kv-cache");
    const mode = { batch: sequences, bf16: opts.bf16 ?? false, kvCache: opts.kvCache };
    const at: LayerContext = { ids, positions, batch, single, mode, opts };
    let h = ops.embedding(P.embed, ids);
    for (let li = 0; li < P.layers.length; li++) {
      const next = opts.checkpoint && ops.tape ? this.checkpointedLayer(ops, P, li, h, at) : this.layer(ops, P, li, h, at);
      // Without a tape nothing refers to the layer input again: free it now (a GPU backend would
      // otherwise hold it until the garbage collector runs, gigabytes per window on a 7B model).
      if (!ops.tape) h.value.dispose();
      h = next;
    }
    if (batch) for (const b of batch) b.advance(1);
    else single?.advance(ids.length);
    // Only the LM head (a product) reads the final hidden states; without a tape the last layer's
    // output is freed now, as each layer's input is above.
    const normed = ops.rmsnorm(h, P.finalNorm, c.rmsEps, PRODUCTS);
    if (!ops.tape) h.value.dispose();
    return normed;
  }

  /** Layer li's attention block on its normed input x [T, D], in whichever form the layer has. */
  private attend(ops: Ops, w: AttentionNodes, li: number, x: Node, at: LayerContext): Node {
    const c = this.config;
    const kind = w.kind;
    if (at.batch)
      return kind === "mha"
        ? mhaDecodeBatch(ops, c, w, this.invFreq, x, at.positions, li, at.batch as KvCache[])
        : kind === "deepseek"
          ? ops.constant(this.deepseek![li]!.decodeBatch(x.value, at.positions, at.batch as LatentCache[]))
          : ops.constant(this.mla![li]!.decodeBatch(x.value, at.ids, at.positions, at.batch as LatentCache[]));
    return kind === "mha"
      ? mhaAttention(ops, c, w, this.invFreq, x, at.positions, li, at.single as KvCache | undefined, at.mode)
      : kind === "deepseek"
        ? deepseekAttention(ops, c, w, this.invFreq, x, at.positions, li, at.single as LatentCache | undefined, at.mode)
        : this.mla![li]!.forward(ops, w, x, at.ids, at.positions, at.single as LatentCache | undefined, at.opts.absorb, at.mode);
  }

  /**
   * The cross-entropy of each of `targets` [T] under the logits of `ids` [T] (what a perplexity sums;
   * `opts.sequences` windows of equal length back to back), with the LM head run over row chunks of
   * at most `chunkRows` so that no [T, V] logits exist: a 4k-token window of a 128k vocabulary would
   * otherwise hold 2 GB of float32 logits. Inference only.
   */
  tokenLosses(ids: Int32Array, targets: Int32Array, opts: ForwardOptions = {}, chunkRows = Math.max(1, Math.floor(2 ** 28 / this.config.vocabSize))): number[] {
    if (targets.length !== ids.length) throw new MlaError("BAD_ARGUMENT", `tokenLosses: ${targets.length} targets for ${ids.length} tokens`, "pass one target per input token");
    const b = this.backend;
    const ops = new Ops(b, null);
    const P = this.constantNodes(ops);
    const h = this.hidden(ops, P, ids, undefined, opts).value;
    const losses: number[] = [];
    for (let r0 = 0; r0 < ids.length; r0 += chunkRows) {
      const rows = Math.min(chunkRows, ids.length - r0);
      const hc = rowRange(b, h, r0, rows);
      const logits = b.linear(hc, P.lmHead.value, null);
      for (const x of b.crossEntropy(logits, targets.subarray(r0, r0 + rows))) losses.push(x);
      logits.dispose();
      if (hc !== h) hc.dispose();
    }
    h.dispose();
    return losses;
  }

  /** The embeddings [T, D] of one sequence's ids [T]: the input of layer 0 (layer by layer inference, see layerForward). */
  embedTokens(ids: Int32Array): Tensor {
    const ops = new Ops(this.backend, null);
    return ops.embedding(this.constantNodes(ops).embed, ids).value;
  }

  /**
   * Layer li alone on one sequence's hidden states h [T, D] (ids [T] its tokens, positions 0…T−1, no
   * cache): the layer's output [T, D]; h is left as it is. Running embedTokens then every layer in
   * turn is `forward` without the final norm and head.
   */
  layerForward(li: number, ids: Int32Array, h: Tensor): Tensor {
    const ops = new Ops(this.backend, null);
    return this.layer(ops, this.constantNodes(ops), li, ops.constant(h), oneSequence(ids)).value;
  }

  /**
   * layerForward on each of several windows (ids `windows[i]`, hidden states `hs[i]` before layer li):
   * their states after it, the ones before freed. What the layer-by-layer fits of a conversion (output
   * refit, per-layer split choice, the bias-free norm fit) advance their calibration windows with.
   * `hs` is consumed however it ends: when a pass throws, the states made so far and the ones not yet
   * advanced are freed too, so a caller lets go of `hs` before the call (see refitOutputProjections).
   */
  advanceWindows(li: number, windows: readonly Int32Array[], hs: readonly Tensor[]): Tensor[] {
    const next: Tensor[] = [];
    try {
      for (const [i, h] of hs.entries()) {
        next.push(this.layerForward(li, windows[i]!, h));
        h.dispose();
      }
      return next;
    } catch (e) {
      for (const t of [...next, ...hs.slice(next.length)]) t.dispose();
      throw e;
    }
  }

  /** The weights as constant graph nodes (inference), made once (weightsChanged drops them). */
  private constantNodes(ops: Ops): ParamNodes {
    this.checkLive();
    return (this.constants ??= paramNodes(ops, this.weights, () => false));
  }

  /** An n×n identity kept on the backend: o_proj's stand-in when attentionOf returns the heads' output. */
  private identity(n: number): Tensor {
    let eye = this.identities.get(n);
    if (!eye) {
      const values = new Float32Array(n * n);
      for (let i = 0; i < n; i++) values[i * n + i] = 1;
      const b = this.backend;
      eye = b.persistent ? b.persistent(() => b.upload(values, [n, n])) : b.upload(values, [n, n]);
      this.identities.set(n, eye);
    }
    return eye;
  }

  /**
   * Layer li's attention block alone on one sequence's normed input x [T, D] (ids [T] its tokens, at
   * positions 0…T−1, no cache): the block's output [T, D], or with `beforeOutput` the heads' output
   * before o_proj, [T, H·Dv] (what the output refit of a conversion solves o_proj against).
   */
  attentionOf(li: number, ids: Int32Array, x: Tensor, beforeOutput = false): Tensor {
    const ops = new Ops(this.backend, null);
    let w = this.constantNodes(ops).layers[li]!.attn;
    if (beforeOutput) w = { ...w, o: ops.constant(this.identity(w.o.value.shape[1]!)), oBias: null } as AttentionNodes;
    return this.attend(ops, w, li, ops.constant(x), oneSequence(ids)).value;
  }

  /**
   * One decoder layer on `h` [T, D]; without a tape its intermediates (not `h`) are freed at once,
   * except the mid-layer residual sum h + attention [T, D], handed to `keepMid` when given.
   */
  private layer(ops: Ops, P: ParamNodes, li: number, h: Node, at: LayerContext, keepMid?: (h1: Tensor) => void): Node {
    const c = this.config;
    const lw = P.layers[li]!;
    // The attention block reads its normed input only through products, unless a caller watches it.
    const x = ops.rmsnorm(h, lw.inputNorm, c.rmsEps, at.opts.onAttentionInput ? undefined : PRODUCTS);
    at.opts.onAttentionInput?.(li, x.value);
    const a = this.attendFreeing(ops, lw.attn, li, x, at);
    const h1 = ops.add(h, a);
    if (!ops.tape) for (const n of [x, a]) n.value.dispose();
    const y = ops.rmsnorm(h1, lw.postNorm, c.rmsEps, PRODUCTS);
    const g = ops.linear(y, lw.gate, lw.gateBias);
    const u = ops.linear(y, lw.up, lw.upBias);
    // Without biases the gate and up gradients feed only their projections' bf16 backward products.
    const s = ops.swiglu(g, u, PRODUCTS, lw.gateBias || lw.upBias ? undefined : PRODUCTS);
    const m = ops.linear(s, lw.down, lw.downBias);
    const out = ops.add(h1, m);
    keepMid?.(h1.value);
    if (!ops.tape) for (const n of [...(keepMid ? [] : [h1]), y, g, u, s, m]) n.value.dispose();
    return out;
  }

  /**
   * attend, but without a tape, inside an arena of its own that keeps only the block's output: q, k,
   * v, the latent and the heads' output (with their bf16 copies) are freed when the block ends rather
   * than when the step does, or, in a cached forward (prefill, fill, prefillScored), when the
   * collector gets to them. Without this an evaluation forward, or a checkpointed layer's first pass,
   * held every layer's attention intermediates until the step's end. What a cached block keeps is
   * made outside the arena: the cache's rows (DeviceRowStore), the absorbed matrices built on first
   * use (Backend.persistent). A batched decode step is left alone: it may be recording a graph.
   */
  private attendFreeing(ops: Ops, w: AttentionNodes, li: number, x: Node, at: LayerContext): Node {
    const b = this.backend;
    if (ops.tape || at.batch || !b.arena) return this.attend(ops, w, li, x, at);
    return b.arena(() => this.attend(ops, w, li, x, at), { keep: (a) => [a.value] });
  }

  /**
   * Activation checkpointing: the layer runs without a tape (only its input, its output and, with
   * checkpointKeepsMid, its mid-layer residual sum stay alive) and runs again, recorded, when the
   * backward reaches it, without the products that only feed a kept sum (ResidualRecomputeOps); the recomputed
   * intermediates live in an arena of their own that closes as soon as this layer's backward is
   * done. Trainable weights add into their gradient slots as usual; the input gradient is summed
   * into a buffer allocated outside that arena.
   */
  private checkpointedLayer(ops: Ops, P: ParamNodes, li: number, h: Node, at: LayerContext): Node {
    const b = this.backend;
    const k = b.training;
    if (!k) throw new MlaError("UNSUPPORTED", `activation checkpointing needs a backend with training kernels; ${b.name} has none`, "use --device cpu or --device cuda");
    let mid: Tensor | null = null;
    const keepMid = at.opts.checkpointKeepsMid ?? true;
    const out = this.layer(new Ops(b, null, true), P, li, new Node(h.value, false), at, keepMid ? (h1) => (mid = h1) : undefined);
    const lw = P.layers[li]!;
    const sums = new Map<Node, Tensor>([[lw.down, out.value], ...(mid ? [[lw.attn.o, mid] as [Node, Tensor]] : [])]);
    const node = new Node(out.value, true);
    ops.tape!.push(() => {
      try {
        if (node.grad) this.recomputeLayer(P, li, h, at, sums, node.grad);
      } finally {
        mid?.dispose();
      }
    });
    return node;
  }

  /** The taped recompute and backward of checkpointed layer li from its input h, seeded with its output's gradient. */
  private recomputeLayer(P: ParamNodes, li: number, h: Node, at: LayerContext, sums: ReadonlyMap<Node, Tensor>, seed: Tensor): void {
    const b = this.backend;
    const k = b.training!;
    const dh = k.zeros(h.value.size, `the layer ${li} input gradient`).reshape(h.value.shape);
    const recompute = () => {
      const tape = new Tape(b);
      const input = new Node(h.value, true);
      input.gradTarget = dh;
      const replay = new ResidualRecomputeOps(b, tape, sums);
      const top = this.layer(replay, P, li, input, at);
      replay.checkConsumed();
      tape.backward(top, seed);
    };
    if (b.arena) b.arena(recompute);
    else recompute();
    // The next layer's input gradient has been used up; the one of the last layer is the final norm's.
    if (inputGradients.has(seed)) seed.dispose();
    inputGradients.add(dh);
    if (h.requiresGrad) h.accumulate(b, dh);
  }

  private disposed = false;

  /**
   * Frees every tensor the model holds on its backend (weights, absorbed MLA projections, identities)
   * now, rather than when the garbage collector finds their handles: a script that loads one model
   * after another on a GPU gets the memory back at once. Decode sessions and caches made from the
   * model are the caller's to dispose first. Idempotent; any later use of the model is refused.
   */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.mla?.forEach((m) => m.invalidate());
    this.deepseek?.forEach((m) => m.invalidate());
    for (const eye of this.identities.values()) eye.dispose();
    this.identities.clear();
    this.constants = null;
    // namedTensors lists a tied LM head once, as the embedding it is.
    for (const [, t] of namedTensors(this.config, this.weights)) t.dispose();
  }

  /** Refuses work on a disposed model (its tensors' device memory may already hold something else). */
  private checkLive(): void {
    if (this.disposed) throw new MlaError("BAD_ARGUMENT", "this model was disposed (LlamaModel.dispose())", "load the model again with loadModel()");
  }

  /** Counts weightsChanged() calls: a recorded decode step (DecodeSession) holds the weights it read. */
  weightsVersion = 0;

  /** Call after changing weights in place: drops the absorbed MLA projections built from them. */
  weightsChanged(): void {
    this.weightsVersion++;
    this.constants = null;
    this.mla?.forEach((m) => m.invalidate());
    this.deepseek?.forEach((m) => m.invalidate());
  }
}

export interface LoadedModel {
  dir: string;
  source: string;
  config: ModelConfig;
  model: LlamaModel;
  tokenizer: TextTokenizer;
}

export interface LoadModelOptions {
  /** Where the weights live and the ops run (default the TypeScript reference; selectBackend("auto") picks the fastest). */
  backend?: Backend;
  /** "auto" (the default) keeps a bf16 checkpoint's linear weights bf16 on a backend that can (CUDA); "f32" decodes them, as training needs. */
  weights?: WeightStorage;
}

const LOAD_KINDS: OptionKinds<LoadModelOptions> = { backend: "object", weights: "string" };

/** Resolves MODEL (folder, cache id, alias, bundled name) and reads its config, weights and tokenizer onto the backend. */
export function loadModel(spec: string, opts: LoadModelOptions = {}): LoadedModel {
  checkOptionTypes("loadModel()", opts, LOAD_KINDS);
  if (opts.weights !== undefined && !WEIGHT_STORAGES.includes(opts.weights)) throw new MlaError("BAD_ARGUMENT", `weights ${JSON.stringify(opts.weights)} is not known`, `use ${WEIGHT_STORAGES.join(" or ")}`);
  const { dir, source } = resolveModel(spec);
  const config = readHfConfig(dir);
  const ckpt = Checkpoint.open(dir);
  try {
    const backend = opts.backend ?? referenceBackend;
    const model = new LlamaModel(config, loadLlamaWeights(ckpt, config, backend, opts.weights ?? "auto"), backend);
    return { dir: path.resolve(dir), source, config, model, tokenizer: loadTokenizer(dir) };
  } finally {
    ckpt.close();
  }
}
