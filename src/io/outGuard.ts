/**
 * Inputs are never modified: an output a command writes (a folder it fills, or replaces with --force;
 * a file it writes) must not be an input, lie inside an input folder, or hold an input. Replacing a
 * folder that holds the input model would delete the model (convert … --out PARENT --force did).
 */
import fs from "node:fs";
import path from "node:path";
import { MlaError } from "../errors.js";

/** An input of a command: what the message calls it ("the input model folder", "--data") and its path. */
export interface InputPath {
  name: string;
  path: string | undefined | null;
  /** Another output of the same command (finetune's run folder beside its token cache): it may not exist yet, and is compared all the same. */
  output?: boolean;
}

/** The path with symbolic links resolved as far as it exists (the rest appended), so aliases compare equal. */
export function realPath(p: string): string {
  const abs = path.resolve(p);
  let head = abs;
  const tail: string[] = [];
  while (!fs.existsSync(head)) {
    const parent = path.dirname(head);
    if (parent === head) return abs;
    tail.unshift(path.basename(head));
    head = parent;
  }
  return path.join(fs.realpathSync(head), ...tail);
}

/** Whether the path `inner` is `outer` or lies inside it (both resolved the same way by the caller). */
export const within = (inner: string, outer: string) => inner === outer || inner.startsWith(outer.endsWith(path.sep) ? outer : outer + path.sep);

/**
 * Refuses `out` (given by `flag`, e.g. "--out") when it is one of `inputs`, lies inside one, or holds
 * one. Inputs that do not exist are skipped (their own check reports them), outputs are not. `hint`
 * replaces the default hints, for an output whose harm is not that of a folder written or replaced
 * (it should say why the paths must stay apart).
 */
export function refuseOutOverInputs(flag: string, out: string, inputs: readonly InputPath[], hint?: string): void {
  const o = realPath(out);
  // Replacing the working folder (or one above it) with --force would empty the folder the user is in.
  if (within(realPath(process.cwd()), o)) throw new MlaError("BAD_ARGUMENT", `${flag} ${out} is the working folder or holds it`, hint ?? `choose a new folder below it, e.g. ${flag} ./result`);
  for (const input of inputs) {
    if (!input.path || (!input.output && !fs.existsSync(input.path))) continue;
    const p = realPath(input.path);
    if (within(o, p)) throw new MlaError("BAD_ARGUMENT", `${flag} ${out} is ${input.name}${o === p ? "" : " or inside it"} (${input.path})`, hint ?? "choose a new path; inputs are never modified");
    if (within(p, o)) throw new MlaError("BAD_ARGUMENT", `${flag} ${out} holds ${input.name} (${input.path})${hint ? "" : ": writing or replacing it would change or delete that input"}`, hint ?? "choose a path that contains none of the inputs");
    for (const place of linkedPlaces(input.path))
      if (within(o, place) || within(place, o))
        throw new MlaError("BAD_ARGUMENT", `${flag} ${out} ${within(o, place) ? "is" : "holds"} ${place}, where files of ${input.name} (${input.path}) are linked from${hint ? "" : ": writing or replacing it would change or delete them"}`, hint ?? "choose a path apart from the inputs and the folders their links point into");
  }
}

/**
 * The folders that the linked files of folder `dir` live in (a Hugging Face hub snapshot's files are
 * links into ../../blobs): replacing one deletes the input as surely as replacing `dir` itself.
 */
function linkedPlaces(dir: string): string[] {
  if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) return [];
  const places = new Set<string>();
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    if (!e.isSymbolicLink()) continue;
    try {
      places.add(path.dirname(fs.realpathSync(path.join(dir, e.name))));
    } catch {
      // A dangling link: its own read reports it.
    }
  }
  places.delete(realPath(dir));
  return [...places];
}
