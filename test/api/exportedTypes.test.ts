/**
 * Every named type a script meets through the public API can be imported from it: the parameter and
 * result types of each exported function and constructor, and the named types of their members
 * (an option's type, a result field's). A type missing there (ReportOptions was) leaves a
 * TypeScript script writing `Parameters<typeof writeReport>[2]` to name its options.
 */
import test from "node:test";
import assert from "node:assert/strict";
import path from "node:path";
import ts from "typescript";
import { ROOT } from "../helpers.js";

const SRC = path.join(ROOT, "src") + path.sep;
/** Named types that are not exported from their own module, with why that is fine. */
const LOCAL: Record<string, string> = {
  Raw: "normalizeHfConfig's parsed config.json: a local name for Record<string, unknown>",
  PipelineOwned: "the FinetuneOptions keys pipeline() sets itself, inside an Omit: PipelineOptions[\"finetune\"] names the type",
};
const NAMED = new Set([ts.SyntaxKind.InterfaceDeclaration, ts.SyntaxKind.TypeAliasDeclaration, ts.SyntaxKind.ClassDeclaration, ts.SyntaxKind.EnumDeclaration]);

/** The named types of the repository reached from the index's functions and classes, each with where it was met, that the index does not export. */
function unexported(): Map<string, string> {
  const program = ts.createProgram([path.join(SRC, "index.ts")], { strict: true, module: ts.ModuleKind.NodeNext, moduleResolution: ts.ModuleResolutionKind.NodeNext, target: ts.ScriptTarget.ES2022, noEmit: true });
  const checker = program.getTypeChecker();
  const index = checker.getSymbolAtLocation(program.getSourceFile(path.join(SRC, "index.ts"))!)!;
  const exports = checker.getExportsOfModule(index);
  const target = (s: ts.Symbol) => (s.flags & ts.SymbolFlags.Alias ? checker.getAliasedSymbol(s) : s);
  const exported = new Set(exports.map(target));
  const missing = new Map<string, string>();
  const seen = new Set<ts.Symbol>();
  // depth 0: a parameter or result; 1: a member of one (an option, a result's field); deeper is not followed.
  const named = (sym: ts.Symbol | undefined) => {
    const decl = sym?.declarations?.[0];
    return !!decl && decl.getSourceFile().fileName.startsWith(SRC) && NAMED.has(decl.kind);
  };
  const record = (sym: ts.Symbol, via: string) => {
    if (!exported.has(sym) && !(sym.name in LOCAL) && !missing.has(sym.name)) missing.set(sym.name, via);
  };
  const visit = (t: ts.Type, via: string, depth: number): void => {
    // A named union (TaskItems) is named as itself, then its parts are.
    if (t.isUnionOrIntersection()) {
      if (named(t.aliasSymbol)) record(t.aliasSymbol!, via);
      return t.types.forEach((u) => visit(u, via, depth));
    }
    t.aliasTypeArguments?.forEach((u) => visit(u, via, depth));
    if (t.flags & ts.TypeFlags.Object && (t as ts.ObjectType).objectFlags & ts.ObjectFlags.Reference) checker.getTypeArguments(t as ts.TypeReference).forEach((u) => visit(u, via, depth));
    const sym = t.aliasSymbol ?? t.getSymbol();
    const decl = sym?.declarations?.[0];
    if (!sym || !decl || !decl.getSourceFile().fileName.startsWith(SRC)) return;
    if (!NAMED.has(decl.kind)) {
      // An inline object type ({ dir, model, … }) or a function: its members are the ones a script names.
      if (depth < 1) members(t, via, depth + 1);
      return;
    }
    record(sym, via);
    if (seen.has(sym) || depth >= 1) return;
    seen.add(sym);
    if (decl.kind !== ts.SyntaxKind.ClassDeclaration) members(t, `${via} > ${sym.name}`, depth + 1);
  };
  const members = (t: ts.Type, via: string, depth: number) => {
    for (const p of checker.getPropertiesOfType(t)) {
      const pt = checker.getTypeOfSymbol(p);
      visit(pt, `${via}.${p.name}`, depth);
      for (const s of pt.getCallSignatures()) signature(s, `${via}.${p.name}`, depth);
    }
  };
  const signature = (s: ts.Signature, name: string, depth: number) => {
    for (const p of s.parameters) visit(checker.getTypeOfSymbol(p), `${name}(${p.name})`, depth);
    visit(s.getReturnType(), `${name}() result`, depth);
  };
  for (const e of exports) {
    const s = target(e);
    if (!(s.flags & (ts.SymbolFlags.Function | ts.SymbolFlags.Variable | ts.SymbolFlags.Class))) continue;
    const type = checker.getTypeOfSymbol(s);
    for (const sig of type.getCallSignatures()) signature(sig, e.name, 0);
    for (const sig of type.getConstructSignatures()) signature(sig, `new ${e.name}`, 0);
  }
  return missing;
}

test("every named type of an exported function's parameters and results (and their members) is exported", () => {
  const missing = unexported();
  assert.deepEqual([...missing].map(([name, via]) => `${name} (met at ${via})`), [], "re-export these from src/index.ts");
});
