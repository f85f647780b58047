/**
 * One source of truth for the C ABI: every prototype the TypeScript side hands to koffi
 * (src/backends/native/*.ts) must match the declaration in native/include/mla.h — same function,
 * same parameter types in the same order (names and const aside; `mla_status` is returned as int).
 * A mismatch would not fail to link: an int64 read as int32, or a missing argument, corrupts memory.
 */
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { ROOT } from "../helpers.js";

interface Prototype {
  ret: string;
  params: string[];
}

/** "const mla_cuda_buf* const* k1s" → "mla_cuda_buf**"; "int64_t n" → "int64_t"; "float x[]" → "float*". */
function paramType(p: string): string {
  const t = p.replace(/\bconst\b/g, " ").replace(/\[\s*\]/g, "*").trim();
  const m = /^(.*?)\s*\b([A-Za-z_]\w*)$/.exec(t);
  // The last identifier is the name when something (a type) comes before it.
  const type = m && /\w/.test(m[1]!) ? m[1]! : t;
  return type.replace(/\s+/g, "");
}

function parse(decl: string): [string, Prototype] | null {
  const m = /^(.*?)\b(mla_\w+)\s*\(([^)]*)\)$/s.exec(decl.replace(/\s+/g, " ").trim());
  if (!m) return null;
  const params = m[3]!.trim() === "void" || m[3]!.trim() === "" ? [] : m[3]!.split(",").map(paramType);
  const ret = paramType(m[1]!.trim() + " x");
  return [m[2]!, { ret: ret === "mla_status" ? "int" : ret, params }];
}

function headerDeclarations(): Map<string, Prototype> {
  const text = fs.readFileSync(path.join(ROOT, "native", "include", "mla.h"), "utf8").replace(/\/\*[\s\S]*?\*\//g, "").replace(/\/\/.*$/gm, "").replace(/^#.*$/gm, "");
  const out = new Map<string, Prototype>();
  for (const stmt of text.split(";")) {
    const p = parse(stmt.replace(/typedef[\s\S]*\}/, "").replace(/extern "C" \{|\}/g, ""));
    if (p) out.set(p[0], p[1]);
  }
  return out;
}

function koffiPrototypes(): { file: string; name: string; proto: Prototype; text: string }[] {
  const dir = path.join(ROOT, "src", "backends", "native");
  const out: { file: string; name: string; proto: Prototype; text: string }[] = [];
  for (const f of fs.readdirSync(dir).filter((n) => n.endsWith(".ts"))) {
    const src = fs.readFileSync(path.join(dir, f), "utf8");
    for (const m of src.matchAll(/"([^"\n]*\bmla_\w+\s*\([^"\n]*\))"/g)) {
      const p = parse(m[1]!);
      if (p) out.push({ file: f, name: p[0], proto: p[1], text: m[1]! });
    }
  }
  return out;
}

test("every koffi prototype matches its declaration in native/include/mla.h", () => {
  const header = headerDeclarations();
  const used = koffiPrototypes();
  assert.ok(header.size > 50, `parsed ${header.size} declarations from mla.h`);
  assert.ok(used.length > 50, `found ${used.length} koffi prototypes`);
  const problems: string[] = [];
  for (const u of used) {
    const h = header.get(u.name);
    if (!h) problems.push(`${u.file}: ${u.name} is not declared in mla.h`);
    else if (h.ret !== u.proto.ret || h.params.join(", ") !== u.proto.params.join(", "))
      problems.push(`${u.file}: ${u.name}\n    koffi:  ${u.proto.ret} (${u.proto.params.join(", ")})\n    mla.h:  ${h.ret} (${h.params.join(", ")})`);
  }
  assert.deepEqual(problems, []);
});

test("the prototype parser reads the forms the header uses", () => {
  assert.deepEqual(parse("mla_status mla_cuda_x(const mla_cuda_buf* const* k, int64_t n, const int32_t* pos, float s)"), ["mla_cuda_x", { ret: "int", params: ["mla_cuda_buf**", "int64_t", "int32_t*", "float"] }]);
  assert.deepEqual(parse("const char* mla_last_error(void)"), ["mla_last_error", { ret: "char*", params: [] }]);
  assert.deepEqual(parse("mla_cuda_buf* mla_cuda_alloc(int64_t n, int32_t dtype)"), ["mla_cuda_alloc", { ret: "mla_cuda_buf*", params: ["int64_t", "int32_t"] }]);
});
