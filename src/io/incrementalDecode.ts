/**
 * The text of a growing list of token ids, handed out as the ids arrive (`generate` streaming to
 * stdout), such that the pieces handed out add up to the decode of the whole list, byte for byte.
 *
 * Decoding all ids at every step costs O(n) per token; decoding each id alone is wrong (a
 * SentencePiece "▁" is a space only after other text, one character may span several byte tokens).
 * So the ids are decoded from an anchor, with a few ids before it as context, and only text that
 * later ids cannot change is handed out: not a trailing U+FFFD (the bytes of a character whose other
 * bytes are still to come).
 *
 * That is the decoder's text before clean_up_tokenization_spaces (" ." → ".", " n't" → "n't"): a
 * tokenizer that cleans up spaces has its text cleaned here by a SpaceCleaner, which holds back only
 * an end a later piece could still clean (" ", " n", " '", …; see src/io/cleanUpSpaces.ts). Decoding
 * windows cleaned would be wrong: a window's clean-up does not see the text on either side of it.
 * serve's TextStream (src/serve/textStream.ts) cleans its text the same way.
 */
import type { TextTokenizer } from "./tokenizer.js";
import { SpaceCleaner } from "./cleanUpSpaces.js";
import { checkTokenizerArg } from "../util/argTypes.js";
import { describe } from "../util/optionTypes.js";
import { MlaError } from "../errors.js";

/** Ids before the anchor decoded with the window, so its first piece reads as it does in the whole text. */
const CONTEXT_IDS = 5;
/** Ids past the anchor before it moves on (the window decoded per id stays this short). */
const WINDOW_IDS = 16;

export class IncrementalDecoder {
  private readonly ids: number[] = [];
  /** Ids before it are settled: their text, as the whole decode has it, is `anchorText`. */
  private anchor = 0;
  private anchorText = "";
  /** The text of the context ids before the anchor, decoded alone. */
  private contextText = "";
  /** Token boundaries past the anchor and the text up to each (where the anchor may move). */
  private marks: { at: number; tail: string }[] = [];
  /** The text handed out so far, before clean-up. */
  private given = "";
  /** Cleans up spaces in the text handed out, where the tokenizer's decode does. */
  private readonly cleaner: SpaceCleaner;

  constructor(
    private readonly tokenizer: TextTokenizer,
    private readonly opts: { skipSpecialTokens?: boolean } = {},
  ) {
    // undefined failed here as a TypeError, a number only at the first push.
    checkTokenizerArg("new IncrementalDecoder()", tokenizer);
    this.cleaner = new SpaceCleaner(tokenizer.cleansUpSpaces === true);
  }

  /** The decoder's text of `ids`, spaces not cleaned up (the cleaner does that over the whole text). */
  private decode(ids: readonly number[]): string {
    return this.tokenizer.decode(ids, { skipSpecialTokens: this.opts.skipSpecialTokens ?? false, cleanUpSpaces: false });
  }

  /** Takes the next ids (a prompt's at once, or one per step); returns the text that can be handed out now (maybe ""). */
  push(ids: readonly number[]): string {
    // One id (what generate's onToken hears) has no length: it read as no ids, and nothing ever came out.
    if (typeof ids !== "object" || ids === null || typeof ids.length !== "number")
      throw new MlaError("BAD_ARGUMENT", `IncrementalDecoder.push(): the ids are ${describe(ids)}, not an array of token ids`, "pass [id] for one id, e.g. onToken: (_, id) => process.stdout.write(decoder.push([id]))");
    if (!ids.length) return "";
    this.ids.push(...ids);
    const window = this.decode(this.ids.slice(Math.max(0, this.anchor - CONTEXT_IDS)));
    // New ids that change the context's text: wait for more, or for finish().
    if (!window.startsWith(this.contextText)) return "";
    const tail = window.slice(this.contextText.length);
    const text = this.anchorText + tail;
    const settled = text.length - unsettled(text);
    let out = "";
    if (settled > this.given.length && text.startsWith(this.given)) {
      out = text.slice(this.given.length, settled);
      this.given += out;
    }
    this.marks.push({ at: this.ids.length, tail });
    if (this.ids.length - this.anchor > WINDOW_IDS) this.moveAnchor(tail, settled);
    return this.cleaner.push(out);
  }

  /**
   * The anchor moves to the last boundary whose text is settled and still begins the window's text
   * (a boundary inside a character decodes to U+FFFD there and does not).
   */
  private moveAnchor(tail: string, settled: number): void {
    for (let k = this.marks.length - 1; k >= 0; k--) {
      const m = this.marks[k]!;
      if (this.anchorText.length + m.tail.length > settled || !tail.startsWith(m.tail) || m.tail.endsWith("\uFFFD")) continue;
      this.anchorText += m.tail;
      this.anchor = m.at;
      this.contextText = this.decode(this.ids.slice(Math.max(0, this.anchor - CONTEXT_IDS), this.anchor));
      this.marks = [];
      return;
    }
  }

  /**
   * The rest of the text, once no more ids come: the whole list decoded at once, less what was handed
   * out. `exact` is false where the pieces handed out do not begin that decode (a tokenizer whose
   * decode changes earlier text in ways the rules above do not foresee); `rest` is then the whole text.
   */
  finish(): { rest: string; exact: boolean } {
    const whole = this.decode(this.ids);
    if (!whole.startsWith(this.given)) return { rest: this.tokenizer.decode(this.ids, { skipSpecialTokens: this.opts.skipSpecialTokens ?? false }), exact: false };
    const rest = whole.slice(this.given.length);
    this.given = whole;
    return { rest: this.cleaner.push(rest) + this.cleaner.finish(), exact: true };
  }
}

/** Characters at the end of `text` that later ids may still change: the bytes of an unfinished character. */
function unsettled(text: string): number {
  let from = text.length;
  while (from > 0 && text[from - 1] === "\uFFFD") from--;
  return text.length - from;
}
