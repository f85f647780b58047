/**
 * A choice's token entries, for a request that asks for log-probabilities: the echoed prompt's, then
 * one per generated token, each with its text, its offset in the text returned once that is known
 * (tokenOffsets.ts), and whether it has been streamed yet.
 */
import type { TextTokenizer } from "../io/tokenizer.js";
import type { TokenLogprobs } from "../model/sampling.js";
import type { TokenEntry } from "./responseShapes.js";
import type { Prompt } from "./requestPrompts.js";
import { tokenBytes } from "./tokenBytes.js";
import { alignOffsets, astralIn, offsetsOf, TokenOffsets, type Mark } from "./tokenOffsets.js";
import { TextStream } from "./textStream.js";

/**
 * The entry of token `id` (and of the step's most likely tokens) after `prev`; its offset is set by
 * the caller (tokenOffsets.ts). A token's text is as it reads after `prev` (so a SentencePiece piece
 * keeps its leading space): the text of [prev, id] less that of [prev]; special tokens by name. A
 * byte token short of a whole character reads as U+FFFD. Spaces are not cleaned up: that is done to
 * the whole text, not to a token (a pair's clean-up would be neither the token nor the text).
 */
function tokenEntry(tokenizer: TextTokenizer, prev: number, id: number, lp: TokenLogprobs): TokenEntry {
  const decode = (ids: number[]) => tokenizer.decode(ids, { skipSpecialTokens: false, cleanUpSpaces: false });
  const before = decode([prev]);
  const text = (t: number) => {
    const both = decode([prev, t]), alone = decode([t]);
    // A byte after an incomplete character's bytes can add nothing to their U+FFFD: it reads as its own.
    return both.startsWith(before) && (both.length > before.length || !alone.includes("\uFFFD")) ? both.slice(before.length) : alone;
  };
  const entry = (t: number) => {
    const token = text(t);
    return { token, bytes: tokenBytes(tokenizer, t, token) };
  };
  return { ...entry(id), offset: 0, logprob: lp.logprob, top: lp.top.map((t) => ({ ...entry(t.id), logprob: t.logprob })) };
}

/**
 * The entries of an echoed prompt's tokens, from `scored` (the log-probabilities of tokens 1…), and
 * where the completion's offsets begin. Offsets are in the echo as it comes back: the ids' decode
 * (cleaned up where the tokenizer does), or the text as sent, which they are moved into where its
 * tokens decode otherwise (alignOffsets).
 */
function promptEntries(tokenizer: TextTokenizer, prompt: Prompt, scored: readonly TokenLogprobs[]): { entries: TokenEntry[]; end: number } {
  const ids = prompt.ids;
  const entries: TokenEntry[] = [{ token: tokenizer.decode([ids[0]!], { skipSpecialTokens: false, cleanUpSpaces: false }), offset: 0, logprob: null, top: null }];
  for (let k = 1; k < ids.length; k++) entries.push(tokenEntry(tokenizer, ids[k - 1]!, ids[k]!, scored[k - 1]!));
  // What each token adds to the echo, decoded as a completion's text is (an incomplete character at
  // the end adds nothing: the echo leaves it to the completion).
  const stream = new TextStream(tokenizer, [], [], { promptWhole: true });
  const adds = ids.map((id) => (stream.push(id), stream.decoded));
  const { offsets, text } = offsetsOf(adds, prompt.echoCleaned);
  const echo = prompt.echo ?? text;
  alignOffsets(offsets, text, echo, entries.map((e) => e.token)).forEach((o, k) => (entries[k]!.offset = o));
  // In code points, as the offsets are.
  return { entries, end: echo.length - astralIn(echo) };
}

export class ChoiceEntries {
  /** Every entry so far. */
  readonly all: TokenEntry[] = [];
  /** How many of `all` have their offset set. */
  private known = 0;
  /** How many of `all` have been streamed. */
  private sent = 0;
  /** The last id, for the next token's text. */
  private last: number;
  /** Where the completion's offsets begin: after the echoed prompt's. */
  private promptEnd = 0;
  /** The completion's offsets (made at its first token), and where each entry's token is in them. */
  private offsets: TokenOffsets | null = null;
  private readonly at: Mark[] = [];

  constructor(
    private readonly tokenizer: TextTokenizer,
    prompt: readonly number[],
  ) {
    this.last = prompt[prompt.length - 1]!;
  }

  /** The echoed `prompt`'s entries, from `scored` (the log-probabilities of its tokens 1…). */
  addPrompt(prompt: Prompt, scored: readonly TokenLogprobs[]): void {
    const p = promptEntries(this.tokenizer, prompt, scored);
    this.all.push(...p.entries);
    this.known = this.all.length;
    this.promptEnd = p.end;
  }

  /**
   * The choice's new token `tok`: its entry where it has log-probabilities `lp`; `adds`: the text it
   * adds to the completion's (its TextStream's `decoded`; "" for one that ends the sequence).
   */
  record(tok: number, lp: TokenLogprobs | undefined, adds: string): void {
    if (lp) {
      this.offsets ??= new TokenOffsets(this.tokenizer.cleansUpSpaces === true, this.promptEnd);
      const entry = tokenEntry(this.tokenizer, this.last, tok, lp);
      this.at[this.all.length] = this.offsets.add(adds);
      this.all.push(entry);
    }
    this.last = tok;
  }

  /** Sets the offsets of the entries that are known now (every one once `final`); returns how many are known. */
  settle(final = false): number {
    if (final) this.offsets?.finish();
    for (; this.known < this.all.length; this.known++) {
      const offset = this.offsets!.offset(this.at[this.known]!);
      if (offset === null) break;
      this.all[this.known]!.offset = offset;
    }
    return this.known;
  }

  /** The entries not yet streamed whose offsets are known; they then count as sent. */
  unsent(): TokenEntry[] {
    const known = this.settle(), list = this.all.slice(this.sent, known);
    this.sent = known;
    return list;
  }
}
