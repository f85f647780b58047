/**
 * The most UTF-8 bytes of text one token can stand for, read from a tokenizer.json: a text of more than
 * n times that many bytes encodes to more than n tokens, which a server can tell without tokenizing it.
 *
 * A BPE token is a vocabulary string, an added token, or a byte token ("<0x41>") or unknown token for a
 * piece the vocabulary lacks. The strings are measured as the vocabulary spells them, which is never
 * shorter than the text they stand for: "▁" (3 bytes) for a space, a byte-level character (1–2 bytes) for
 * one byte, "<0x41>" (6) for one byte. The bound holds only while nothing shrinks or drops text, so it is
 * null for anything else: another model type, a normalizer that can shrink text (NFC, lowercasing) or a
 * pre-tokenizer that drops it (whitespace splitting), unknown pieces fused into one token or dropped for
 * want of an unknown token, an added token that swallows the whitespace beside it (lstrip, rstrip).
 */

interface Step {
  type?: string;
  pattern?: { String?: unknown };
  content?: unknown;
  behavior?: string;
  normalizers?: Step[];
  pretokenizers?: Step[];
}

interface BpeModel {
  type?: string;
  vocab?: unknown;
  merges?: unknown;
  byte_fallback?: boolean;
  unk_token?: unknown;
  fuse_unk?: boolean;
}

/** UTF-8 length of `s` (Buffer.byteLength costs ~1 µs a call: 100 ms over a vocabulary and its merges). */
function bytes(s: string): number {
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    // A surrogate pair's two halves make 4 bytes together; a lone one is written as U+FFFD's 3.
    n += c < 0x80 ? 1 : c < 0x800 ? 2 : c >= 0xd800 && c < 0xdc00 && (s.charCodeAt(i + 1) & 0xfc00) === 0xdc00 ? (i++, 4) : 3;
  }
  return n;
}

/** Normalizers that only add text: Prepend, and Replace of a string by one at least as long. */
function neverShrinks(n: Step | null | undefined): boolean {
  if (!n) return true;
  if (n.type === "Sequence") return (n.normalizers ?? []).every(neverShrinks);
  return n.type === "Prepend" || (n.type === "Replace" && typeof n.pattern?.String === "string" && typeof n.content === "string" && bytes(n.content) >= bytes(n.pattern.String));
}

/** Pre-tokenizers that split text without dropping any of it. */
function keepsAll(p: Step | null | undefined): boolean {
  if (!p) return true;
  if (p.type === "Sequence") return (p.pretokenizers ?? []).every(keepsAll);
  return ["Metaspace", "ByteLevel", "Digits"].includes(p.type ?? "") || ((p.type === "Split" || p.type === "Punctuation") && p.behavior !== "Removed");
}

function hasByteLevel(p: Step | null | undefined): boolean {
  return p?.type === "ByteLevel" || (p?.pretokenizers ?? []).some(hasByteLevel);
}

/** The 256 characters a byte-level pre-tokenizer spells bytes with (GPT-2's bytes_to_unicode). */
function byteLevelAlphabet(): string[] {
  let extra = 0;
  return Array.from({ length: 256 }, (_, b) => String.fromCodePoint((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174 ? b : 256 + extra++));
}

/** The bound of the tokenizer.json `tj` (parsed), or null where nothing bounds a token's bytes (above). */
export function bytesPerToken(tj: Record<string, unknown>): number | null {
  const m = tj["model"] as BpeModel | null | undefined;
  if (m?.type !== "BPE" || typeof m.vocab !== "object" || m.vocab === null || Array.isArray(m.vocab) || !Array.isArray(m.merges)) return null;
  const pre = tj["pre_tokenizer"] as Step | null | undefined;
  if (!neverShrinks(tj["normalizer"] as Step | null | undefined) || !keepsAll(pre)) return null;
  const added = (tj["added_tokens"] as { content?: unknown; lstrip?: boolean; rstrip?: boolean }[] | undefined) ?? [];
  if (added.some((a) => a.lstrip || a.rstrip || typeof a.content !== "string")) return null;
  const vocab = m.vocab as Record<string, number>;
  const merges = m.merges as unknown[];
  const merged = (x: unknown): string => (Array.isArray(x) ? x.join("") : String(x).replace(" ", ""));
  // A piece the vocabulary lacks (a character, or a merge's result it does not list) must become at least
  // one token of its own: byte tokens, or an unknown token that is not fused with its neighbours.
  // Without either the library drops it, so every piece must then be in the vocabulary.
  const byteTokens = m.byte_fallback === true && Array.from({ length: 256 }, (_, b) => `<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`).every((t) => t in vocab);
  const ownUnknown = !byteTokens && typeof m.unk_token === "string" && m.unk_token in vocab && m.fuse_unk !== true;
  if (!byteTokens && !ownUnknown && !(hasByteLevel(pre) && byteLevelAlphabet().every((c) => c in vocab) && merges.every((x) => merged(x) in vocab))) return null;
  let most = 4;
  for (const t of Object.keys(vocab)) most = Math.max(most, bytes(t));
  for (const a of added) most = Math.max(most, bytes(a.content as string));
  // An unknown token stands for a character (at most 4 bytes, above) or a merge's result.
  if (ownUnknown) for (const x of merges) most = Math.max(most, bytes(merged(x)));
  return most;
}
