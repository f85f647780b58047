/**
 * Where each token begins in the text returned (the completions API's `text_offset`): the length of
 * the text the tokens before it make there, so text[offset_k, offset_k+1) is what token k adds to it.
 * A token fed here is the text it adds as the returned text is decoded (textStream.ts's `decoded`),
 * not its own text in `tokens`: a special token left out of the text (an echoed BOS) and a byte short
 * of a whole character add nothing, and the byte that completes a character adds all of it, so each of
 * a character's bytes begins where the character does. Offsets count Unicode code points, as Python's
 * str indices do (vLLM's, and what an OpenAI client in Python slices with): a character outside the
 * BMP is one, not its two UTF-16 code units.
 *
 * A tokenizer that cleans up spaces (" ." → ".", " n't" → "n't") has the text returned cleaned as a
 * whole, so there each offset is less the spaces the clean-up dropped before its token. Whether a
 * space is dropped can hang on the tokens after it (" n" then "'t"): a completion's offset is known
 * once the clean-up has settled the text up to its token, and its entry waits for that before it is
 * streamed.
 */
import { cleanUpSpaces, SpaceCleaner } from "../io/cleanUpSpaces.js";

/** Where a token's text begins among the texts added: in UTF-16 code units (the clean-up's), and the characters outside the BMP before it. */
export interface Mark {
  units: number;
  astral: number;
}

/** Characters of `text` outside the BMP (surrogate pairs): its length in code points is text.length less these. */
export function astralIn(text: string): number {
  let n = 0;
  for (let i = 0; i < text.length; i++) if ((text.charCodeAt(i) & 0xfc00) === 0xd800) n++;
  return n;
}

export class TokenOffsets {
  private readonly cleaner: SpaceCleaner;
  private length = 0;
  private astral = 0;

  /** `cleans`: the text returned is cleaned up; `base`: the offset of the first token (after an echoed prompt's). */
  constructor(
    cleans: boolean,
    private readonly base = 0,
  ) {
    this.cleaner = new SpaceCleaner(cleans);
  }

  /** Adds the text the next token adds; returns where it begins (for offset()). */
  add(text: string): Mark {
    const at = { units: this.length, astral: this.astral };
    this.length += text.length;
    this.astral += astralIn(text);
    this.cleaner.push(text);
    return at;
  }

  /** The offset of the token added at `at`, or null while the clean-up may still drop a space before it. */
  offset(at: Mark): number | null {
    // The clean-up drops spaces only, so the characters it leaves outside the BMP are all there were.
    return at.units <= this.cleaner.settled ? this.base + this.cleaner.offsetOf(at.units) - at.astral : null;
  }

  /** No more tokens come: every offset is known. */
  finish(): void {
    this.cleaner.finish();
  }

  /** Where the text after the last token begins (once finished). */
  get end(): number {
    return this.offset({ units: this.length, astral: this.astral })!;
  }
}

/** The offsets of tokens that add `texts` (an echoed prompt's), the text they make, and where the text after them begins. */
export function offsetsOf(texts: readonly string[], cleans: boolean): { offsets: number[]; text: string; end: number } {
  const t = new TokenOffsets(cleans);
  const at = texts.map((x) => t.add(x));
  t.finish();
  const text = texts.join("");
  return { offsets: at.map((a) => t.offset(a)!), text: cleans ? cleanUpSpaces(text) : text, end: t.end };
}

/**
 * `offsets` into `decoded` moved into `text`, the text the client gets, where the two differ (a prompt
 * as sent whose tokens decode otherwise: a leading space the encoding folds, a normalized character).
 * Offsets where they agree from the start stay; where they agree at the end, they keep their distance
 * from it; in between, each is where they start to differ. Text the decode only leaves out (a prompt's
 * first space, which the decoder strips, before more spaces) is placed as early as it can be, and
 * belongs to the first token there whose own text (`tokens`) begins with it: that one stays, those
 * after it move past it.
 */
export function alignOffsets(offsets: readonly number[], decoded: string, text: string, tokens: readonly string[] = []): number[] {
  if (decoded === text) return [...offsets];
  const a = Array.from(decoded), b = Array.from(text);
  // The end first: in a run of like characters ("   x" decoded "  x") the part left out is at the run's
  // start, where the stripped space was; taking the start first put it at the run's end, and the token
  // after the run ("x") at a space.
  let tail = 0;
  while (tail < a.length && tail < b.length && a[a.length - 1 - tail] === b[b.length - 1 - tail]) tail++;
  let head = 0;
  while (head < a.length - tail && head < b.length - tail && a[head] === b[head]) head++;
  const shift = b.length - a.length;
  const left = shift > 0 && head === a.length - tail ? b.slice(head, head + shift).join("") : null;
  const owner = left === null ? -1 : offsets.findIndex((o, k) => o === head && tokens[k]?.startsWith(left));
  return offsets.map((o, k) => (o < head || (o === head && (owner < 0 || k <= owner)) ? o : o >= a.length - tail ? o + shift : head));
}
