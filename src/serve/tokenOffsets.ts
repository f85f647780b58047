/**
 * Where each token begins in the text returned (the completions API's `text_offset`). As vLLM gives
 * them, offsets run on by the tokens' texts (each as it reads after the token before, special tokens by
 * name). A tokenizer that cleans up spaces (" ." → ".", " n't" → "n't") has the text returned cleaned
 * as a whole, so there each offset is less the spaces the clean-up dropped before its token, and
 * text[offset_k, offset_k+1) is token k's text less its dropped spaces. Whether a space is dropped
 * can hang on the tokens after it (" n" then "'t"): a completion's offset is known once the clean-up
 * has settled the text up to its token, and its entry waits for that before it is streamed.
 */
import { SpaceCleaner } from "../io/cleanUpSpaces.js";

export class TokenOffsets {
  private readonly cleaner: SpaceCleaner;
  /** Characters of the tokens' texts added so far. */
  private length = 0;

  /** `cleans`: the text returned is cleaned up; `base`: the offset of the first token (after an echoed prompt's). */
  constructor(
    cleans: boolean,
    private readonly base = 0,
  ) {
    this.cleaner = new SpaceCleaner(cleans);
  }

  /** Adds the next token's text; returns where it begins among the tokens' texts (for offset()). */
  add(token: string): number {
    const at = this.length;
    this.length += token.length;
    this.cleaner.push(token);
    return at;
  }

  /** The offset of the token added at `at`, or null while the clean-up may still drop a space before it. */
  offset(at: number): number | null {
    return at <= this.cleaner.settled ? this.base + this.cleaner.offsetOf(at) : null;
  }

  /** No more tokens come: every offset is known. */
  finish(): void {
    this.cleaner.finish();
  }

  /** Where the text after the last token begins (once finished). */
  get end(): number {
    return this.offset(this.length)!;
  }
}

/** The offsets of a whole list of tokens' texts (an echoed prompt's), and where the text after them begins. */
export function offsetsOf(tokens: readonly string[], cleans: boolean): { offsets: number[]; end: number } {
  const t = new TokenOffsets(cleans);
  const at = tokens.map((x) => t.add(x));
  t.finish();
  return { offsets: at.map((a) => t.offset(a)!), end: t.end };
}
