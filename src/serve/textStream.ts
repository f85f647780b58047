/**
 * Text of a growing list of token ids, given out piece by piece as the ids arrive (a streamed
 * completion), with stop strings cut off.
 *
 * Decoding each new id on its own is wrong for SentencePiece-style tokenizers (a piece's leading "▁"
 * becomes a space only after other text, and one character may span several byte tokens), and
 * decoding all ids at every step costs O(n) per token. So, as vLLM does, the ids are decoded from a
 * few ids back: the text of ids[prefix:] minus the text of ids[prefix:read] is what the new ids add,
 * and it is given out only once it does not end in an incomplete character (U+FFFD).
 *
 * Those windows are decoded before clean_up_tokenization_spaces (" ." → ".", " n't" → "n't"): a
 * window's clean-up would not see the text around it, so the difference of two cleaned windows is not
 * the whole text's. A tokenizer that cleans up spaces has the completion's text cleaned here as one
 * text, holding back only an end the next token could still clean (src/io/cleanUpSpaces.ts). Stop
 * strings are looked for in that cleaned text, which is the text returned, streamed or not.
 */
import type { TextTokenizer } from "../io/tokenizer.js";
import { SpaceCleaner } from "../io/cleanUpSpaces.js";

/** Ids of the prompt decoded before the first new one, so its leading space comes out as the text has it. */
const CONTEXT_IDS = 5;

/**
 * How many of the prompt's last ids are bytes of a character it does not finish (at most its last
 * CONTEXT_IDS). They count as the completion's, so the character the first new ids complete comes
 * out whole; an echoed prompt leaves them out, or their bytes would come back twice.
 */
export function incompleteTail(tokenizer: TextTokenizer, prompt: readonly number[], skipSpecialTokens = true): number {
  const ids = prompt.slice(-CONTEXT_IDS);
  let read = ids.length;
  while (read > 0 && tokenizer.decode(ids.slice(0, read), { skipSpecialTokens }).endsWith("\uFFFD")) read--;
  return ids.length - read;
}

export class TextStream {
  private readonly ids: number[];
  private prefix: number;
  private read: number;
  /** The completion's text so far, spaces cleaned up (stop strings not yet cut). */
  private text = "";
  /** Cleans up the decoded pieces' spaces as one text, where the tokenizer's decode does. */
  private readonly cleaner: SpaceCleaner;
  /** How much of `text` has been given out. */
  private given = 0;
  private stopped = false;
  /** The text the last push decoded, spaces not cleaned up: "" while it holds its id back (bytes of a character not yet whole, a special token left out), all of a character from the id that completes it. */
  decoded = "";

  /**
   * `prompt`: the prompt's ids (only its last few are decoded); `stops`: strings that end the text, not
   * part of it unless `opts.includeStop` (vLLM's include_stop_str_in_output); `opts.skipSpecialTokens`
   * (default true, as vLLM and OpenAI give completions): special tokens add no text;
   * `opts.promptWhole`: the prompt's ids encode a text, so they end in whole characters (a U+FFFD
   * they decode to at the end is the text's own: without this it would be taken for the start of a
   * character and come out again with the completion).
   */
  constructor(private readonly tokenizer: TextTokenizer, prompt: readonly number[], private readonly stops: readonly string[] = [], private readonly opts: { includeStop?: boolean; skipSpecialTokens?: boolean; promptWhole?: boolean } = {}) {
    this.ids = prompt.slice(-CONTEXT_IDS);
    this.prefix = 0;
    this.read = this.ids.length - (opts.promptWhole ? 0 : incompleteTail(tokenizer, prompt, opts.skipSpecialTokens ?? true));
    this.cleaner = new SpaceCleaner(tokenizer.cleansUpSpaces === true);
  }

  /** Text of ids, special tokens (BOS, EOS) left out unless asked, as vLLM and OpenAI give completions; spaces not cleaned up. */
  private decode(ids: readonly number[]): string {
    return this.tokenizer.decode(ids, { skipSpecialTokens: this.opts.skipSpecialTokens ?? true, cleanUpSpaces: false });
  }

  /** Whether a stop string has ended the text (push then adds nothing). */
  get hitStop(): boolean {
    return this.stopped;
  }

  /** Takes the next id; returns the text that can be given out now (possibly ""). */
  push(id: number): string {
    this.decoded = "";
    if (this.stopped) return "";
    this.ids.push(id);
    const before = this.decode(this.ids.slice(this.prefix, this.read));
    const after = this.decode(this.ids.slice(this.prefix));
    // No character spans more than 4 byte tokens: ids that still decode to U+FFFD after more than
    // that are bytes that never make a character, given out as U+FFFD rather than held for ever.
    const stuck = this.ids.length - this.read > 4;
    if (after.length > before.length && (!after.endsWith("\uFFFD") || stuck)) {
      this.decoded = after.slice(before.length);
      this.text += this.cleaner.push(this.decoded);
      this.prefix = this.read;
      this.read = this.ids.length;
    } else if (after === before) {
      // Ids that add no text (special tokens) are read, but the window keeps its start: from them on, a
      // SentencePiece piece's leading space would read as the start of the text and be dropped.
      this.read = this.ids.length;
    }
    return this.release(false);
  }

  /** The rest of the text at the end of the completion. */
  finish(): string {
    if (!this.stopped) {
      if (this.read < this.ids.length) {
        // Ids still held back (an incomplete character at the very end): their text as it decodes.
        const before = this.decode(this.ids.slice(this.prefix, this.read));
        this.text += this.cleaner.push(this.decode(this.ids.slice(this.prefix)).slice(before.length));
        this.read = this.ids.length;
      }
      this.text += this.cleaner.finish();
    }
    return this.release(true);
  }

  /** The text given out so far. */
  get output(): string {
    return this.text.slice(0, this.given);
  }

  /**
   * Text up to the first stop string (then stops), or, while the text may still grow into one, all but
   * its longest end that begins a stop string.
   */
  private release(final: boolean): string {
    let end = this.text.length;
    // A stop string may start inside text already given out only by its held-back end: search from
    // there on (given out text never holds a whole stop string, or the stream would have ended).
    const from = Math.max(0, this.given - Math.max(0, ...this.stops.map((s) => s.length - 1)));
    // The first stop string met ends the text: before it, or after it with includeStop.
    let at = -1, length = 0;
    for (const s of this.stops) {
      const i = this.text.indexOf(s, from);
      if (i >= 0 && (at < 0 || i < at)) (at = i), (length = s.length);
    }
    if (at >= 0) {
      end = at + (this.opts.includeStop ? length : 0);
      this.stopped = true;
    }
    if (this.stopped) this.text = this.text.slice(0, end);
    else if (!final) end -= this.heldBack();
    const out = this.text.slice(this.given, end);
    this.given = Math.max(this.given, end);
    return out;
  }

  /** Characters at the end of the text that begin some stop string (they may turn out to be one). */
  private heldBack(): number {
    let hold = 0;
    for (const s of this.stops)
      for (let n = Math.min(s.length - 1, this.text.length); n > hold; n--)
        if (this.text.endsWith(s.slice(0, n))) {
          hold = n;
          break;
        }
    return hold;
  }
}
