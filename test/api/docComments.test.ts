/**
 * A doc comment sits right above what it describes. Two stacked above one declaration show only the
 * last in an editor's hover, and the first is then another declaration's, left behind when code moved:
 * writeReport's ("Writes OUT (HTML) and its Markdown twin…") sat above ReportOptions, and writeReport
 * had none. A file's header comment above its first declaration is not one of them.
 */
import test from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import ts from "typescript";
import { ROOT } from "../helpers.js";

const SRC = path.join(ROOT, "src");

/** Each declaration in `file` with its doc comments (jsDoc blocks), as file:line of its first. */
function docBlocks(file: string): { where: string; name: string; docs: string[] }[] {
  const text = fs.readFileSync(file, "utf8");
  const sf = ts.createSourceFile(file, text, ts.ScriptTarget.ES2022, true);
  const found: { where: string; name: string; docs: string[] }[] = [];
  const visit = (n: ts.Node): void => {
    const blocks = (n as { jsDoc?: ts.JSDoc[] }).jsDoc ?? [];
    if (blocks.length) {
      const name = (n as { name?: ts.Node }).name?.getText(sf) ?? ts.SyntaxKind[n.kind];
      found.push({ where: `${path.relative(ROOT, file)}:${sf.getLineAndCharacterOfPosition(blocks[0]!.getStart(sf)).line + 1}`, name, docs: blocks.map((b) => b.getText(sf)) });
    }
    ts.forEachChild(n, visit);
  };
  visit(sf);
  return found;
}

/** The first block where it opens the file (its header), which the first declaration's parse takes as its own too. */
const headerFirst = (file: string, docs: string[]) => fs.readFileSync(file, "utf8").replace(/^#!.*\n/, "").trimStart().startsWith(docs[0]!);

test("no declaration in src has two doc comments stacked above it (one left behind by another declaration)", () => {
  const files = (fs.readdirSync(SRC, { recursive: true }) as string[]).filter((f) => f.endsWith(".ts")).map((f) => path.join(SRC, f));
  const stacked = files.flatMap((file) =>
    docBlocks(file)
      .map((d) => ({ ...d, docs: headerFirst(file, d.docs) ? d.docs.slice(1) : d.docs }))
      .filter((d) => d.docs.length > 1)
      .map((d) => `${d.where} (${d.name}): ${d.docs.map((t) => t.split("\n")[0]).join(" / ")}`),
  );
  assert.deepEqual(stacked, []);
});

test("writeReport's doc comment is above writeReport, and ReportOptions has its own alone", () => {
  const blocks = docBlocks(path.join(SRC, "eval", "report", "report.ts"));
  const of = (name: string) => blocks.find((b) => b.name === name)?.docs;
  assert.deepEqual(of("ReportOptions")?.length, 1);
  assert.match(of("ReportOptions")![0]!, /^\/\*\* writeReport's options/);
  assert.deepEqual(of("writeReport")?.length, 1);
  assert.match(of("writeReport")![0]!, /^\/\*\* Writes OUT \(HTML\) and its Markdown twin/);
});
