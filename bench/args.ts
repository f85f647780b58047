/** Command-line reading shared by the bench scripts: `--name value` flags, and the first bare argument. */

/** The flags and first positional argument of `argv` (process.argv.slice(2)); a missing positional prints `usage` and throws. */
export function benchArgs(argv: readonly string[], usage: string): { opt: (name: string, fallback: string) => string; first: string } {
  const opt = (name: string, fallback: string): string => {
    const i = argv.indexOf(`--${name}`);
    return i >= 0 ? argv[i + 1]! : fallback;
  };
  const first = argv.find((a, i) => !a.startsWith("--") && !argv[i - 1]?.startsWith("--"));
  if (!first) throw new Error(`usage: ${usage}`);
  return { opt, first };
}
