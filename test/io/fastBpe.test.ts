import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { Tokenizer as HfTokenizer } from "@huggingface/tokenizers";
import { useFastBpe } from "../../src/io/fastBpe.js";
import { FIXTURES, MODELS, SHARED } from "../helpers.js";

/** The library's tokenizer for `json`, and a second one whose BPE merge loop is useFastBpe's. */
function pair(json: Record<string, unknown>): [HfTokenizer, HfTokenizer] {
  const slow = new HfTokenizer(json, {});
  const fast = new HfTokenizer(json, {});
  assert.ok(useFastBpe((fast as unknown as { model: unknown }).model), "the fast loop is installed");
  return [slow, fast];
}

const ids = (t: HfTokenizer, text: string) => t.encode(text, { add_special_tokens: false }).ids;

// Runs of one character (merges of equal rank everywhere: the leftmost must go first), spaces, tabs, line
// breaks, digits, accents, CJK, emoji, ligatures, a stray surrogate pair split by nothing.
const EDGES = ["a".repeat(1001), "aaa bbb  aaaa   ab ab", " leading space", "trailing  ", "\t\ttabs\n\n\nlines\r\n", "naïve café 日本語 😀👍🏽 ﬁ ① ٣٤ ²", "0123456789 3.14159 1,000,000", "x"];

function texts(): string[] {
  const out = [...EDGES, fs.readFileSync(path.join(FIXTURES, "text", "tinystories_25k.txt"), "utf8")];
  for (const f of ["debian_dev_val.txt", "wikitext2_valid.txt"]) {
    const file = path.join(SHARED, "data", "text", f);
    if (fs.existsSync(file)) out.push(fs.readFileSync(file, "utf8").slice(0, 60_000));
  }
  return out;
}

test("the fast BPE merge loop gives the library's ids: SentencePiece-style tokenizers (stories260K; Llama 2's 32k, mha26m-debian, where present) on whole texts and edge cases", () => {
  const dirs = [path.join(MODELS, "stories260K"), path.join(SHARED, "models", "mha26m-debian")].filter((d) => fs.existsSync(path.join(d, "tokenizer.json")));
  for (const dir of dirs) {
    const [slow, fast] = pair(JSON.parse(fs.readFileSync(path.join(dir, "tokenizer.json"), "utf8")));
    for (const text of texts()) assert.deepEqual(ids(fast, text), ids(slow, text), `${path.basename(dir)}: ${JSON.stringify(text.slice(0, 40))}… (${text.length} chars)`);
  }
});

test("the fast BPE merge loop gives the library's ids: a byte-level tokenizer with 400 merges trained here, pieces short and long (cached and not)", () => {
  const level = { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: true };
  // The byte-level alphabet as GPT-2 maps it, then merges learned greedily from TinyStories (most frequent
  // pair first, ties by the pair's string), so they fire as a real tokenizer's do.
  const printable = [...range(33, 127), ...range(161, 173), ...range(174, 256)];
  let extra = 0;
  const alphabet = Array.from({ length: 256 }, (_, b) => String.fromCodePoint(printable.includes(b) ? b : 256 + extra++));
  const corpus = fs.readFileSync(path.join(FIXTURES, "text", "tinystories_25k.txt"), "utf8").slice(0, 8000);
  const pieces = corpus.match(/'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu) ?? [];
  let words = pieces.map((p) => [...Buffer.from(p, "utf8")].map((b) => alphabet[b]!));
  const merges: [string, string][] = [];
  const vocab: Record<string, number> = Object.fromEntries(alphabet.map((c, i) => [c, i]));
  for (let m = 0; m < 400; m++) {
    const counts = new Map<string, number>();
    for (const w of words) for (let i = 0; i + 1 < w.length; i++) counts.set(w[i] + " " + w[i + 1], (counts.get(w[i] + " " + w[i + 1]) ?? 0) + 1);
    const best = [...counts].sort((x, y) => y[1] - x[1] || (x[0] < y[0] ? -1 : 1))[0];
    if (!best) break;
    const [a, b] = best[0].split(" ") as [string, string];
    merges.push([a, b]);
    vocab[a + b] ??= Object.keys(vocab).length;
    words = words.map((w) => {
      const out: string[] = [];
      for (let i = 0; i < w.length; i++) {
        if (i + 1 < w.length && w[i] === a && w[i + 1] === b) {
          out.push(a + b);
          i++;
        } else out.push(w[i]!);
      }
      return out;
    });
  }
  const json = { version: "1.0", truncation: null, padding: null, added_tokens: [], normalizer: null, pre_tokenizer: level, post_processor: null, decoder: level, model: { type: "BPE", dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: false, byte_fallback: false, vocab, merges } };
  const [slow, fast] = pair(json);
  const long = "z".repeat(300) + " " + corpus.replace(/\s+/g, "");  // single pieces past the 256-character cache limit
  for (const text of [...texts(), long]) assert.deepEqual(ids(fast, text), ids(slow, text), `${JSON.stringify(text.slice(0, 40))}… (${text.length} chars)`);
});

test("useFastBpe leaves models it does not know alone", () => {
  assert.equal(useFastBpe(null), false);
  assert.equal(useFastBpe({ bpe: () => [] }), false, "no merges");
  assert.equal(useFastBpe({ bpe: () => [], merges: [["a", "b"]], cache: new Map(), max_length_to_cache: 256 }), false, "no vocabulary map");
  assert.equal(useFastBpe({ bpe: () => [], merges: ["a b"], tokens_to_ids: new Map(), cache: new Map(), max_length_to_cache: 256 }), false, "merges not split into pairs");
});

function range(a: number, b: number): number[] {
  return Array.from({ length: b - a }, (_, i) => a + i);
}
