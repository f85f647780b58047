/**
 * What `generate` prints on stdout. One prompt's text streams as its tokens come, so Ctrl-C keeps
 * what was generated, and a run that finishes has printed the same bytes as the whole text decoded
 * at the end (IncrementalDecoder). Several prompts decode as one batch: their texts, interleaved
 * token by token, would not read, so each is printed whole at the end after its `--- N` line.
 * A chat prints the reply alone (the prompt is the template's markup, its special tokens skipped);
 * else the prompt and its continuation, BOS left out. The stop token that ended a sequence is not
 * text (it printed as "</s>"). A run stopped early (Ctrl-C) prints what was generated so far the same
 * way: the streamed text's end, or each prompt's partial text after its `--- N` line.
 */
import type { TextTokenizer } from "../io/tokenizer.js";
import { IncrementalDecoder } from "../io/incrementalDecode.js";
import type { Logger } from "../util/log.js";

export interface GenerateOutput {
  /** Whether the text streams (then a terminal shows the text as progress). */
  readonly streaming: boolean;
  /** For generate's onToken: streams one prompt's text, and keeps several prompts' ids for stopped(). */
  onToken: (sequence: number, id: number) => void;
  /** Generation has begun, its options taken: a streamed prompt goes out (a refused option printed nothing). */
  begin(): void;
  /** The rest: the stream's end, or every sequence's text. */
  end(sequences: readonly { ids: readonly number[] }[]): void;
  /** Generation stopped early (Ctrl-C): the rest of what was generated so far, as end() prints it. */
  stopped(): void;
}

interface Setup {
  tokenizer: TextTokenizer;
  prompts: readonly (readonly number[])[];
  chat: boolean;
  bos: number | null;
  stops: ReadonlySet<number>;
  write: (s: string) => void;
  log: Logger;
}

export function generateOutput(o: Setup): GenerateOutput {
  const { tokenizer, prompts, chat, bos, stops, log } = o;
  const write = (s: string) => void (s && o.write(s));
  if (prompts.length > 1 || prompts.length === 0) {
    // Each sequence's ids as they come: a stopped run prints them as a finished one prints its own.
    const partial: number[][] = prompts.map(() => []);
    const end = (sequences: readonly { ids: readonly number[] }[]) =>
      sequences.forEach((s, i) => {
        if (prompts.length > 1) write(`--- ${i + 1}\n`);
        const ids = s.ids.length > 0 && stops.has(s.ids[s.ids.length - 1]!) ? s.ids.slice(0, -1) : s.ids;
        write((chat ? tokenizer.decode(ids, { skipSpecialTokens: true }) : tokenizer.decode([...prompts[i]!, ...ids].filter((t) => t !== bos))) + "\n");
      });
    return {
      streaming: false,
      begin: () => {},
      onToken: (i, t) => void partial[i]?.push(t),
      end,
      stopped: () => end(partial.map((ids) => ({ ids }))),
    };
  }
  const stream = new IncrementalDecoder(tokenizer, { skipSpecialTokens: chat });
  let begun = false;
  const begin = () => {
    if (!begun && !chat) write(stream.push(prompts[0]!.filter((t) => t !== bos)));
    begun = true;
  };
  return {
    streaming: true,
    begin,
    onToken: (_, t) => {
      begin();
      // A stop token ends its sequence, so it is the last: the text printed whole left it out.
      if (!stops.has(t) && (chat || t !== bos)) write(stream.push([t]));
    },
    end: finish,
    stopped: finish,
  };

  function finish(): void {
    begin();
    const { rest, exact } = stream.finish();
    if (!exact) {
      write("\n");
      log.warn("the text streamed above differs from the whole sequence's decode (this tokenizer's decode changes earlier text as later tokens come); the whole text follows");
    }
    write(rest + "\n");
  }
}
