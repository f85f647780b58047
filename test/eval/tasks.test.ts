import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { MlaError } from "../../src/errors.js";
import { loadModel } from "../../src/model/llama.js";
import { evaluate } from "../../src/eval/evaluate.js";
import { accNormPick, parseTaskNames, runTask, TASKS, TaskName } from "../../src/eval/tasks/index.js";
import { parseHellaswag, parseInstructionChoices, parseLambada } from "../../src/eval/tasks/items.js";
import { fastCpu, GOLDEN, MODELS, SHARED, tmpDir } from "../helpers.js";

const DATA = path.join(SHARED, "data", "eval");
const haveData = fs.existsSync(DATA);
const golden = JSON.parse(fs.readFileSync(path.join(GOLDEN, "tasks_stories260K.json"), "utf8")) as {
  limit: number;
  tasks: Record<string, { predictions: { acc?: number; acc_norm?: number; gold?: number; scores?: number[]; greedy?: boolean; logprob?: number }[]; acc: number; ppl?: number }>;
};

// fastCpu(): ~7× the reference backend here, and ~1e-7 from it, far inside the 2e-3 allowed against PyTorch.
const cpu = fastCpu();
const lm = loadModel(path.join(MODELS, "stories260K"), cpu);
// Every item of each golden (200) on the native backend (~19 s for the five tasks on 2 cores); on the
// reference backend the first 100, enough to cover every task's scoring paths within the suite's time
// budget. The metrics are recomputed over the items run.
const LIMIT = cpu.backend ? golden.limit : Math.min(golden.limit, 100);
for (const task of Object.keys(TASKS) as TaskName[]) {
  test(`${task}: stories260K predictions equal PyTorch/transformers item by item (--limit ${LIMIT})`, { skip: haveData ? false : `needs ${DATA}` }, async () => {
    const r = await runTask(lm.model, lm.tokenizer, task, DATA, LIMIT, null);
    const full = golden.tasks[task]!;
    const predictions = full.predictions.slice(0, LIMIT);
    const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
    const g = task === "lambada"
      ? { predictions, acc: mean(predictions.map((p) => (p.greedy ? 1 : 0))), ppl: Math.exp(-mean(predictions.map((p) => p.logprob!))) }
      : { predictions, acc: mean(predictions.map((p) => (p.acc === p.gold ? 1 : 0))) };
    assert.equal(r.n, g.predictions.length);
    r.predictions.forEach((p, i) => {
      const q = g.predictions[i]!;
      if (task === "lambada") {
        assert.equal(p.greedy, q.greedy, `item ${i} greedy`);
        assert.ok(Math.abs(p.logprob! - q.logprob!) < 2e-3, `item ${i} logprob ${p.logprob} vs ${q.logprob}`);
      } else {
        assert.equal(p.acc, q.acc, `item ${i} acc`);
        assert.equal(p.acc_norm, q.acc_norm, `item ${i} acc_norm`);
        p.scores!.forEach((s, j) => assert.ok(Math.abs(s - q.scores![j]!) < 2e-3, `item ${i} choice ${j}: ${s} vs ${q.scores![j]}`));
      }
    });
    assert.ok(Math.abs(r.metrics["acc"]! - g.acc) < 1e-12);
    if (task === "lambada") assert.ok(Math.abs(r.metrics["ppl"]! / g.ppl! - 1) < 1e-3);
  });
}

test("unknown task names and corrupt or truncated task files are refused, naming the item", () => {
  assert.throws(() => parseTaskNames("arc-easy,mmlu"), (e: Error) => e instanceof MlaError && /task "mmlu" is not known[\s\S]*hint: known tasks: arc-easy/.test(e.message));
  const dir = tmpDir();
  const arc = path.join(dir, "arc.json");
  fs.writeFileSync(arc, JSON.stringify([{ instruction: "Please choose the correct answer to the question: Q?\n\nAnswer1: a Answer2: b\n\nAnswer format: answer1/answer2", answer: "answer2" }, { instruction: "Please choose the correct answer to the question: Q?\n\nAnswer1: a Answer2: b\n\nAnswer format: answer1/answer2", answer: "answer3" }]));
  assert.deepEqual(parseInstructionChoices(arc, "answer", 1)[0]!.choices, [" a", " b"]);
  assert.throws(() => parseInstructionChoices(arc, "answer"), (e: Error) => e instanceof MlaError && /arc\.json item 1: answer "answer3" does not name one of 2 options/.test(e.message));
  // An empty option (scored as a lone space, likelier than any answer) and a lone option (always right) are corrupt items.
  const q = (block: string, format: string) => ({ instruction: `Please choose the correct answer to the question: Q?\n\n${block}\n\nAnswer format: ${format}`, answer: "answer1" });
  for (const [item, re] of [[q("Answer1:  Answer2: b", "answer1/answer2"), /arc\.json item 0: option 1 is empty/], [q("Answer1: yes", "answer1"), /arc\.json item 0: has one option: nothing to choose between/]] as const) {
    fs.writeFileSync(arc, JSON.stringify([item]));
    assert.throws(() => parseInstructionChoices(arc, "answer"), (e: Error) => e instanceof MlaError && re.test(e.message), re.source);
  }
  fs.writeFileSync(arc, '[{"instruction": "Please choose');
  assert.throws(() => parseInstructionChoices(arc, "answer"), (e: Error) => e instanceof MlaError && /not valid JSON/.test(e.message));
  const hs = path.join(dir, "hs.txt");
  fs.writeFileSync(hs, "ctx\n1\na\nb\nc\nd\nctx2\nx\na\nb\nc\nd\n");
  assert.throws(() => parseHellaswag(hs), (e: Error) => e instanceof MlaError && /hs\.txt item 1: gold line is "x"/.test(e.message));
  fs.writeFileSync(hs, "ctx\n1\na\n\nc\nd\n");
  assert.throws(() => parseHellaswag(hs), (e: Error) => e instanceof MlaError && /hs\.txt item 0: ending 1 is empty/.test(e.message));
  fs.writeFileSync(hs, "ctx\n1\na\nb\n");
  assert.throws(() => parseHellaswag(hs), (e: Error) => e instanceof MlaError && /not a multiple of 6/.test(e.message));
  if (haveData) {
    const bz = path.join(dir, "hs.txt.bz2");
    const full = fs.readFileSync(path.join(DATA, "hellaswag_val_full.txt.bz2"));
    fs.writeFileSync(bz, full.subarray(0, full.length >> 1));
    assert.throws(() => parseHellaswag(bz), (e: Error) => e instanceof MlaError && /bzip2/.test(e.message));
  }
  const lam = path.join(dir, "l.jsonl");
  fs.writeFileSync(lam, '{"text": "a b c"}\n{"text": "a b c"\n');
  assert.throws(() => parseLambada(lam), (e: Error) => e instanceof MlaError && /l\.jsonl item 1: line 2 is not valid JSON/.test(e.message));
  fs.writeFileSync(lam, '{"text": "a b c "}\n');
  assert.throws(() => parseLambada(lam), (e: Error) => e instanceof MlaError && /l\.jsonl item 0: the text ends in a space: its last word, the target, is empty/.test(e.message));
});

test("a task file holding no items is refused, naming the file, the format expected and a hint (it would score n = 0)", () => {
  const dir = tmpDir();
  const write = (name: string, text: string) => (fs.writeFileSync(path.join(dir, name), text), path.join(dir, name));
  const refused = (parse: () => unknown, file: string, expected: RegExp) =>
    assert.throws(parse, (e: Error) => e instanceof MlaError && e.message.startsWith(`${file}: holds no items; expected `) && expected.test(e.message) && /hint: the file is empty or cut short/.test(e.message), file);
  for (const text of ["", "[]", " \n[ ]\n"]) {
    const f = write("arc.json", text);
    refused(() => parseInstructionChoices(f, "answer"), f, /a JSON array of \{"instruction", "answer"\} objects/);
  }
  for (const text of ["", "\n"]) {
    const f = write("hs.txt", text);
    refused(() => parseHellaswag(f), f, /6 lines per item/);
  }
  for (const text of ["", "\n  \n\n"]) {
    const f = write("l.jsonl", text);
    refused(() => parseLambada(f, 5), f, /one \{"text": …\} object per line/);
  }
});

test("--limit: 0 or a fraction is refused by runTask as by eval; past the file's items, eval scores them all and says so", async () => {
  const dir = tmpDir();
  const item = { instruction: "Please choose the correct answer to the question: Q?\n\nAnswer1: yes Answer2: no\n\nAnswer format: answer1/answer2", answer: "answer1" };
  fs.writeFileSync(path.join(dir, TASKS["arc-easy"].file), JSON.stringify([item, item]));
  for (const limit of [0, 1.5]) await assert.rejects(runTask(lm.model, lm.tokenizer, "arc-easy", dir, limit, null), (e: Error) => e instanceof MlaError && e.message.includes(`--limit ${limit} is not a positive count`));
  const warnings: string[] = [];
  const r = await evaluate(path.join(MODELS, "stories260K"), { tasks: ["arc-easy"], dataDir: dir, limit: 5, device: "reference", progress: null, logger: { info: () => {}, warn: (m: string) => warnings.push(m) } });
  assert.equal(r.tasks!["arc-easy"]!.n, 2);
  assert.deepEqual(warnings, ["arc-easy: its file holds 2 items, fewer than --limit 5: scored all of them"]);
});

test("task items that run past the model's positions are scored as they are, with a warning naming how many and the longest", async () => {
  const dir = tmpDir();
  const short = { instruction: "Please choose the correct answer to the question: Q?\n\nAnswer1: yes Answer2: no\n\nAnswer format: answer1/answer2", answer: "answer1" };
  const long = { ...short, instruction: short.instruction.replace("Q?", "a cat sat. ".repeat(200)) };
  fs.writeFileSync(path.join(dir, TASKS["arc-easy"].file), JSON.stringify([short, long]));
  const warnings: string[] = [];
  const r = await evaluate(path.join(MODELS, "stories260K"), { tasks: ["arc-easy"], dataDir: dir, device: "reference", progress: null, logger: { info: () => {}, warn: (m: string) => warnings.push(m) } });
  assert.equal(r.tasks!["arc-easy"]!.n, 2);
  assert.equal(warnings.length, 1, warnings.join("\n"));
  assert.match(warnings[0]!, /^arc-easy: 1 of its 2 items ran past the model's 512 positions \(the longest \d+ tokens\), scored as they are; lm-eval cuts such items from the left/);
});

// lm-eval divides by Python's len(), which counts code points: an emoji is one character, where a JS
// string's .length counts two UTF-16 units (the pick below went to choice 0 that way).
test("acc_norm divides by the length in characters (code points), not UTF-16 units", () => {
  const choices = [" 😀😀", " abcd"];
  assert.equal([...choices[0]!].length, 3);
  // −3.3/3 = −1.1 < −5/5 = −1; by UTF-16 units, −3.3/5 = −0.66 would have won.
  assert.equal(accNormPick([-3.3, -5], choices), 1);
  assert.equal(accNormPick([-2.7, -5], choices), 0);
  // Ties go to the lower index.
  assert.equal(accNormPick([-3, -5], choices), 0);
});
