/**
 * Prompts prefilled before, kept so that a later prompt starting the same way (a shared system prompt,
 * a chat's earlier turns, the same question again) copies their cache and prefills only the rest, as
 * vLLM's automatic prefix caching does. An entry is a whole prompt's cache and its last-row logits, or
 * a finished sequence's (prompt and reply, without logits); a new prompt takes the entry sharing its
 * longest beginning, cut to that length (DecodeCache.clone with `tokens`). Entries are dropped least
 * recently used first, within a byte budget of their own, apart from the running sequences'. MLA's
 * small cache makes each kept prompt as much cheaper.
 *
 * A prompt that was scored (echo with logprobs) keeps its tokens' scores too, so a later scored prompt
 * sharing its beginning (lm-eval's choices of one question: the same context, another continuation)
 * reuses the shared rows' scores and prefills only from the first token they differ at.
 */
import type { DecodeCache } from "../model/kvCache.js";
import type { TokenLogprobs } from "../model/sampling.js";
import type { FloatArray } from "../tensor/tensor.js";

/** A kept prompt's scores: rows[i] is token i + 1's log-probability and the `top` most likely tokens' after tokens 0…i. */
export interface PromptScores {
  top: number;
  rows: readonly TokenLogprobs[];
}

interface Entry {
  ids: readonly number[];
  cache: DecodeCache;
  /** Logits [V] after all of `ids`; null for a finished sequence's (its last token is prefilled again). */
  logits: FloatArray | null;
  /** The prompt's scores, for its first rows.length rows (null: not scored). */
  scores: PromptScores | null;
  bytes: number;
  used: number;
}

/** Where a prompt can start from: a cache holding its first `tokens` tokens (room for `capacity`). */
export interface PrefixSeed {
  cache: DecodeCache;
  tokens: number;
  /** The logits after all of the prompt, when the seed holds all of it; else the rest is prefilled. */
  logits: FloatArray | null;
  /** For a scored seed (seed's `top`): the scores of the prompt's tokens 1…`tokens` (all of them when the seed holds the whole prompt), with `top` alternatives. */
  scores: TokenLogprobs[] | null;
}

export interface PrefixCacheStats {
  entries: number;
  bytes: number;
  budgetBytes: number;
  /** Prompts that started from an entry, and the prompt tokens they did not prefill. */
  hits: number;
  reusedTokens: number;
}

/** Bytes scores take on the host, roughly: a number and an object per alternative and per row. */
function scoreBytes(s: PromptScores): number {
  return s.rows.length * (s.top + 1) * 48;
}

/** Length of the common beginning of a and b. */
function common(a: readonly number[], b: readonly number[]): number {
  const n = Math.min(a.length, b.length);
  let i = 0;
  while (i < n && a[i] === b[i]) i++;
  return i;
}

export class PrefixCache {
  private readonly entries: Entry[] = [];
  private clock = 0;
  private hits = 0;
  private reused = 0;

  /**
   * `budgetBytes`: the most the kept caches may take; `bytesPerToken`: the bytes per token a cache
   * holds in memory (kvCache.ts, heldBytesPerToken: what a copy's rows take, its logits aside; the
   * batcher's reservations count the same), to skip prompts that cannot fit before copying them;
   * `minTokens`: shorter shared beginnings are prefilled again (a copy costs more than it saves).
   */
  constructor(private readonly budgetBytes: number, private readonly bytesPerToken: number, private readonly minTokens = 16) {}

  /** Whether a prompt this long is kept once prefilled (shorter ones cost less to prefill again than to copy). */
  keeps(prompt: readonly number[]): boolean {
    return prompt.length >= this.minTokens && prompt.length * this.bytesPerToken <= this.budgetBytes;
  }

  /**
   * A copy of the cache holding the longest beginning `prompt` shares with a kept one, or null. With
   * `top` (a prompt to be scored with that many alternatives per token), only entries scored with at
   * least as many count, and the seed also gives the scores of the tokens it holds: it stops one token
   * before the shared beginning ends, since the row scoring the prompt's first own token must run again.
   */
  seed(prompt: readonly number[], capacity: number, top?: number): PrefixSeed | null {
    let best: Entry | null = null, len = 0;
    for (const e of this.entries) {
      if (top !== undefined && !(e.scores && e.scores.top >= top)) continue;
      const n = common(e.ids, prompt);
      if (n > len) (best = e), (len = n);
    }
    if (!best || len < this.minTokens) return null;
    // The logits after the prompt's last token exist only for an entry that is this very prompt;
    // otherwise at least that token is prefilled again, which gives them.
    const rows = best.scores?.rows.length ?? 0;
    const whole = len === prompt.length && len === best.ids.length && best.logits !== null && (top === undefined || rows >= len - 1);
    // A scored seed of t tokens takes the scores of tokens 1…t from the entry: its rows 0…t − 1, which
    // must score the same tokens (t + 1 ≤ len) and exist.
    const tokens = whole ? len : top === undefined ? Math.min(len, prompt.length - 1) : Math.min(len - 1, prompt.length - 1, rows);
    if (tokens < 1) return null;
    let cache: DecodeCache;
    try {
      cache = best.cache.clone({ tokens, capacity });
    } catch {
      // No room for the copy (device memory): the prompt is prefilled whole instead.
      return null;
    }
    best.used = ++this.clock;
    this.hits++;
    this.reused += tokens;
    const scores = top === undefined ? null : best.scores!.rows.slice(0, whole ? len - 1 : tokens).map((r) => ({ logprob: r.logprob, top: r.top.slice(0, top) }));
    return { cache, tokens, logits: whole ? best.logits : null, scores };
  }

  /**
   * Keeps a copy of `cache` (holding exactly `prompt`) and the logits after it (null: not known), and
   * the prompt's scores where it was scored, dropping old entries to make room. Best effort: a copy that
   * finds no memory is not kept. An entry counts the bytes its copy holds (kvCache.ts's heldRows: host caches
   * hold float32 rows, but for the native CPU backend's bf16 rows), its logits and its scores. Returns whether the prompt is kept.
   */
  store(prompt: readonly number[], cache: DecodeCache, logits: FloatArray | null, scores: PromptScores | null = null): boolean {
    if (!this.keeps(prompt)) return false;
    // Already kept, alone or as the beginning of a finished sequence (a repeated prompt): that entry is
    // enough (a repeat then prefills its last token again, for the logits), given the scores it may lack.
    const covering = this.entries.find((e) => e.ids.length >= prompt.length && common(e.ids, prompt) === prompt.length);
    if (covering) {
      covering.used = ++this.clock;
      if (scores && !(covering.scores && covering.scores.top >= scores.top && covering.scores.rows.length >= scores.rows.length)) {
        covering.bytes += scoreBytes(scores) - (covering.scores ? scoreBytes(covering.scores) : 0);
        covering.scores = scores;
      }
      return true;
    }
    // A kept prompt that this one extends (a chat's earlier turn) says nothing this one does not, but
    // for scores this one was not asked for, which hold for the beginning they share.
    for (let i = this.entries.length - 1; i >= 0; i--)
      if (common(this.entries[i]!.ids, prompt) === this.entries[i]!.ids.length) {
        scores ??= this.entries[i]!.scores;
        this.drop(i);
      }
    let copy: DecodeCache;
    try {
      copy = cache.clone({ capacity: prompt.length });
    } catch {
      return false;
    }
    const bytes = copy.heldBytes + (logits?.byteLength ?? 0) + (scores ? scoreBytes(scores) : 0);
    if (bytes > this.budgetBytes) {
      copy.dispose();
      return false;
    }
    while (this.entries.length && this.bytes() + bytes > this.budgetBytes) {
      let oldest = 0;
      this.entries.forEach((e, i) => e.used < this.entries[oldest]!.used && (oldest = i));
      this.drop(oldest);
    }
    this.entries.push({ ids: [...prompt], cache: copy, logits, scores, bytes, used: ++this.clock });
    return true;
  }

  stats(): PrefixCacheStats {
    return { entries: this.entries.length, bytes: this.bytes(), budgetBytes: this.budgetBytes, hits: this.hits, reusedTokens: this.reused };
  }

  /** Frees every kept cache. */
  clear(): void {
    while (this.entries.length) this.drop(0);
  }

  private bytes(): number {
    return this.entries.reduce((n, e) => n + e.bytes, 0);
  }

  private drop(i: number): void {
    this.entries[i]!.cache.dispose();
    this.entries.splice(i, 1);
  }
}
