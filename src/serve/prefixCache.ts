/**
 * Prompts prefilled before, kept so that a later prompt starting the same way (a shared system prompt,
 * a chat's earlier turns, the same question again) copies their cache and prefills only the rest, as
 * vLLM's automatic prefix caching does. An entry is a whole prompt's cache and its last-row logits, or
 * a finished sequence's (prompt and reply, without logits); a new prompt takes the entry sharing its
 * longest beginning, cut to that length (DecodeCache.clone with `tokens`). Entries are dropped least
 * recently used first, within a byte budget of their own, apart from the running sequences'. MLA's
 * small cache makes each kept prompt as much cheaper.
 */
import type { DecodeCache } from "../model/kvCache.js";
import type { FloatArray } from "../tensor/tensor.js";

interface Entry {
  ids: readonly number[];
  cache: DecodeCache;
  /** Logits [V] after all of `ids`; null for a finished sequence's (its last token is prefilled again). */
  logits: FloatArray | null;
  bytes: number;
  used: number;
}

/** Where a prompt can start from: a cache holding its first `tokens` tokens (room for `capacity`). */
export interface PrefixSeed {
  cache: DecodeCache;
  tokens: number;
  /** The logits after all of the prompt, when the seed holds all of it; else the rest is prefilled. */
  logits: FloatArray | null;
}

export interface PrefixCacheStats {
  entries: number;
  bytes: number;
  budgetBytes: number;
  /** Prompts that started from an entry, and the prompt tokens they did not prefill. */
  hits: number;
  reusedTokens: number;
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
   * `budgetBytes`: the most the kept caches may take; `bytesPerToken`: a cache's size per token in its
   * dtype (a lower bound on what a copy holds, to skip prompts that cannot fit before copying them);
   * `minTokens`: shorter shared beginnings are prefilled again (a copy costs more than it saves).
   */
  constructor(private readonly budgetBytes: number, private readonly bytesPerToken: number, private readonly minTokens = 16) {}

  /** Whether a prompt this long is kept once prefilled (shorter ones cost less to prefill again than to copy). */
  keeps(prompt: readonly number[]): boolean {
    return prompt.length >= this.minTokens && prompt.length * this.bytesPerToken <= this.budgetBytes;
  }

  /** A copy of the cache holding the longest beginning `prompt` shares with a kept one, or null. */
  seed(prompt: readonly number[], capacity: number): PrefixSeed | null {
    let best: Entry | null = null, len = 0;
    for (const e of this.entries) {
      const n = common(e.ids, prompt);
      if (n > len) (best = e), (len = n);
    }
    if (!best || len < this.minTokens) return null;
    // The logits after the prompt's last token exist only for an entry that is this very prompt;
    // otherwise at least that token is prefilled again, which gives them.
    const whole = len === prompt.length && len === best.ids.length && best.logits !== null;
    const tokens = whole ? len : Math.min(len, prompt.length - 1);
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
    return { cache, tokens, logits: whole ? best.logits : null };
  }

  /**
   * Keeps a copy of `cache` (holding exactly `prompt`) and the logits after it (null: not known), dropping
   * old entries to make room. Best effort: a copy that finds no memory is not kept. An entry counts the bytes its
   * copy holds (host caches and int8/int4 rows are held as float32) and its logits. Returns whether
   * the prompt is kept.
   */
  store(prompt: readonly number[], cache: DecodeCache, logits: FloatArray | null): boolean {
    if (!this.keeps(prompt)) return false;
    // Already kept, alone or as the beginning of a finished sequence (a repeated prompt): that entry is
    // enough (a repeat then prefills its last token again, for the logits).
    const covering = this.entries.find((e) => e.ids.length >= prompt.length && common(e.ids, prompt) === prompt.length);
    if (covering) {
      covering.used = ++this.clock;
      return true;
    }
    // A kept prompt that this one extends (a chat's earlier turn) says nothing this one does not.
    for (let i = this.entries.length - 1; i >= 0; i--) if (common(this.entries[i]!.ids, prompt) === this.entries[i]!.ids.length) this.drop(i);
    let copy: DecodeCache;
    try {
      copy = cache.clone({ capacity: prompt.length });
    } catch {
      return false;
    }
    const bytes = copy.heldBytes + (logits?.byteLength ?? 0);
    if (bytes > this.budgetBytes) {
      copy.dispose();
      return false;
    }
    while (this.entries.length && this.bytes() + bytes > this.budgetBytes) {
      let oldest = 0;
      this.entries.forEach((e, i) => e.used < this.entries[oldest]!.used && (oldest = i));
      this.drop(oldest);
    }
    this.entries.push({ ids: [...prompt], cache: copy, logits, bytes, used: ++this.clock });
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
