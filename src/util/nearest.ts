/** "Did you mean" for a misspelt name: the CLI's unknown flags and the library's unknown options. */

/** Levenshtein distance (names are short). */
export function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const row = [i];
    for (let j = 1; j <= b.length; j++) row[j] = Math.min(prev[j]! + 1, row[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    prev = row;
  }
  return prev[b.length]!;
}

/** The candidate closest to `word`, if within a typo of it (2 edits from 4 characters on, else 1); ties go to the first. */
export function nearestName(word: string, candidates: readonly string[]): string | undefined {
  const best = candidates.map((k) => ({ k, d: editDistance(word, k) })).sort((x, y) => x.d - y.d)[0];
  return best && best.d <= (word.length >= 4 ? 2 : 1) ? best.k : undefined;
}
