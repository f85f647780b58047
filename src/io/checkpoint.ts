/**
 * A checkpoint folder: one `model.safetensors`, or shards named by `model.safetensors.index.json`.
 * Headers of every shard are read and cross-checked at open; tensor data is read on demand.
 */
import fs from "node:fs";
import path from "node:path";
import { ioError, MlaError } from "../errors.js";
import { checkFactoryMade, checkStringArg } from "../util/argTypes.js";
import { copyFileFresh } from "./atomicDir.js";
import { DTYPE_BYTES, type DType } from "./dtype.js";
import { SafetensorsFile, SafetensorsWriter, TensorEntry, TensorSpec, numel } from "./safetensors.js";

export const INDEX_FILE = "model.safetensors.index.json";

/** Files of a model folder besides config.json and the weights, carried over by convert and finetune. */
export const MODEL_SIDE_FILES = ["tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json", "generation_config.json", "chat_template.jinja", "chat_template.json"];

/**
 * The side files `srcDir` has (tokenizer, generation config), each refused by name unless it is a file
 * this user can read: one that is there but not a file (a folder, a link to nothing or to itself;
 * existsSync calls a link loop absent, and a folder failed the copy as an internal EISDIR), or one
 * without read permission (an internal EACCES from the copy). Conversions check them before their work,
 * since the copy comes after it.
 */
export function modelSideFiles(srcDir: string): string[] {
  const found: string[] = [];
  for (const f of MODEL_SIDE_FILES) {
    const file = path.join(srcDir, f);
    if (!fs.lstatSync(file, { throwIfNoEntry: false })) continue;
    let st: fs.Stats | undefined;
    try {
      st = fs.statSync(file);
    } catch (e) {
      throw ioError("cannot read the model's side file", file, e);
    }
    if (!st.isFile()) throw new MlaError("BAD_CHECKPOINT", `${file} is not a file`, `remove it or put the model's ${f} there`);
    try {
      fs.accessSync(file, fs.constants.R_OK);
    } catch (e) {
      throw ioError("cannot read the model's side file", file, e);
    }
    found.push(f);
  }
  return found;
}

/** Copies the side files `srcDir` has (modelSideFiles) into `dstDir`. */
export function copyModelSideFiles(srcDir: string, dstDir: string): void {
  for (const f of modelSideFiles(srcDir)) copyFileFresh(path.join(srcDir, f), path.join(dstDir, f));
}
export const SINGLE_FILE = "model.safetensors";

/** The dtypes a checkpoint's weights are read from (loadTensor, and the conversions' check of their source); quantized ones are not. */
export const FLOAT_DTYPES: readonly DType[] = ["F32", "F16", "BF16", "F64"];

export class Checkpoint {
  private constructor(readonly dir: string, private readonly where: Map<string, SafetensorsFile>, private readonly files: SafetensorsFile[]) {
    checkFactoryMade(where instanceof Map && Array.isArray(files), "Checkpoint", "Checkpoint.open(dir)");
  }

  static open(dir: string): Checkpoint {
    // A JavaScript caller's number or undefined failed as a TypeError from path.join.
    checkStringArg("Checkpoint.open()", "the model folder", dir, "pass the checkpoint folder's path, e.g. loadModel(spec).dir or resolveModel(spec).dir");
    const indexPath = path.join(dir, INDEX_FILE);
    const files: SafetensorsFile[] = [];
    const where = new Map<string, SafetensorsFile>();
    try {
      if (fs.existsSync(indexPath)) {
        const map = readIndex(indexPath);
        const byShard = new Map<string, SafetensorsFile>();
        for (const [name, shard] of Object.entries(map)) {
          let f = byShard.get(shard);
          if (!f) {
            const p = path.join(dir, shard);
            if (!fs.existsSync(p)) throw new MlaError("BAD_CHECKPOINT", `${indexPath}: tensor "${name}" points at shard ${shard}, which does not exist`, "a shard is missing from the folder; copy the complete checkpoint");
            // A folder there (or an entry of "" or "."): named with the index entry, not as the checkpoint folder's EISDIR.
            if (!fs.statSync(p).isFile()) throw new MlaError("BAD_CHECKPOINT", `${indexPath}: tensor "${name}" points at ${JSON.stringify(shard)}, which is not a file`, "the index names each shard's file; copy the checkpoint again");
            f = SafetensorsFile.open(p);
            files.push(f);
            byShard.set(shard, f);
          }
          if (!f.tensors.has(name)) throw new MlaError("BAD_CHECKPOINT", `${indexPath}: tensor "${name}" is mapped to ${shard}, which does not contain it`, "the index and the shards disagree; copy the checkpoint again");
          where.set(name, f);
        }
      } else {
        const single = path.join(dir, SINGLE_FILE);
        const all = fs.existsSync(single) ? [SINGLE_FILE] : fs.readdirSync(dir).filter((f) => f.endsWith(".safetensors")).sort();
        if (all.length === 0) throw new MlaError("BAD_CHECKPOINT", `${dir}: no ${SINGLE_FILE}, no ${INDEX_FILE} and no *.safetensors file`, "point at a Hugging Face model folder with safetensors weights (PyTorch .bin files are not read)");
        for (const name of all) {
          const f = SafetensorsFile.open(path.join(dir, name));
          files.push(f);
          for (const t of f.tensors.keys()) {
            if (where.has(t)) throw new MlaError("BAD_CHECKPOINT", `${dir}: tensor "${t}" is in both ${path.basename(where.get(t)!.path)} and ${name}`, `add a ${INDEX_FILE} or remove the stray file`);
            where.set(t, f);
          }
        }
      }
    } catch (e) {
      for (const f of files) f.close();
      // A missing folder or a file given for one (ENOENT, ENOTDIR) is named, not thrown raw.
      throw e instanceof MlaError ? e : ioError("cannot read the checkpoint folder", dir, e);
    }
    return new Checkpoint(dir, where, files);
  }

  names(): string[] {
    return [...this.where.keys()];
  }

  has(name: string): boolean {
    return this.where.has(name);
  }

  file(name: string): SafetensorsFile {
    const f = this.where.get(name);
    if (!f) throw new MlaError("BAD_CHECKPOINT", `${this.dir}: tensor "${name}" is missing`, "the checkpoint does not match its config.json (wrong architecture or incomplete download)");
    return f;
  }

  entry(name: string): TensorEntry {
    return this.file(name).entry(name);
  }

  readF32(name: string): Float32Array {
    return this.file(name).readF32(name);
  }

  readBytes(name: string): Uint8Array {
    return this.file(name).readBytes(name);
  }

  readBytesAsync(name: string): Promise<Uint8Array> {
    return this.file(name).readBytesAsync(name);
  }

  /** Total bytes of tensor data. */
  dataBytes(): number {
    let n = 0;
    for (const name of this.where.keys()) {
      const e = this.entry(name);
      n += e.end - e.begin;
    }
    return n;
  }

  close(): void {
    for (const f of this.files) f.close();
  }
}

function readIndex(indexPath: string): Record<string, string> {
  let raw: unknown;
  try {
    raw = JSON.parse(fs.readFileSync(indexPath, "utf8"));
  } catch (e) {
    throw new MlaError("BAD_CHECKPOINT", `${indexPath}: not valid JSON (${(e as Error).message})`, "the index file is corrupt; copy it again");
  }
  const map = (raw as { weight_map?: unknown })?.weight_map;
  if (typeof map !== "object" || map === null || Array.isArray(map) || !Object.values(map).every((v) => typeof v === "string"))
    throw new MlaError("BAD_CHECKPOINT", `${indexPath}: "weight_map" is missing or not an object of tensor name → shard file`, "the index file is corrupt; copy it again");
  for (const shard of new Set(Object.values(map) as string[]))
    if (shard.includes("/") || shard.includes("\\") || shard === ".." ) throw new MlaError("BAD_CHECKPOINT", `${indexPath}: shard name "${shard}" is not a plain file name`, "shards must lie in the checkpoint folder");
  return map as Record<string, string>;
}

export interface ShardPlan {
  file: string;
  specs: TensorSpec[];
}

/** Splits tensors (in order) into shards of at most `maxShardBytes` (a tensor larger than that gets its own shard). */
export function planShards(specs: readonly TensorSpec[], maxShardBytes: number): ShardPlan[] {
  const groups: TensorSpec[][] = [];
  let cur: TensorSpec[] = [];
  let bytes = 0;
  for (const s of specs) {
    const n = numel(s.shape) * DTYPE_BYTES[s.dtype];
    if (cur.length && bytes + n > maxShardBytes) {
      groups.push(cur);
      cur = [];
      bytes = 0;
    }
    cur.push(s);
    bytes += n;
  }
  if (cur.length) groups.push(cur);
  if (groups.length <= 1) return [{ file: SINGLE_FILE, specs: groups[0] ?? [] }];
  const pad = (i: number) => String(i).padStart(5, "0");
  return groups.map((g, i) => ({ file: `model-${pad(i + 1)}-of-${pad(groups.length)}.safetensors`, specs: g }));
}

/**
 * Streams a (possibly sharded) checkpoint into `dir`: call `append` with each tensor's bytes in the
 * order of `specs` (several chunks per tensor allowed, never one chunk across two tensors).
 */
export class CheckpointWriter {
  private readonly plan: ShardPlan[];
  private shard = -1;
  private tensorInShard = 0;
  private leftInTensor = 0;
  private writer: SafetensorsWriter | null = null;
  private chain: Promise<void> = Promise.resolve();

  constructor(readonly dir: string, specs: readonly TensorSpec[], private readonly opts: { maxShardBytes?: number; metadata?: Record<string, string> } = {}) {
    // Taken silently, a folder that is no string failed only at the first shard, after the work.
    checkStringArg("new CheckpointWriter()", "the folder", dir, "pass the path of the folder to write the checkpoint into");
    if (!Array.isArray(specs)) throw new MlaError("BAD_ARGUMENT", "new CheckpointWriter(): the tensor specs are not an array", "pass [{ name, dtype, shape }, …], one per tensor, in the order they will be written");
    this.plan = planShards(specs, opts.maxShardBytes ?? 5 * 2 ** 30);
  }

  get shardFiles(): string[] {
    return this.plan.map((p) => p.file);
  }

  /**
   * Queues `chunk`; the promise settles when it is on disk. Appends are applied strictly in call
   * order, so the caller may fill its next buffer while this one is written.
   */
  append(chunk: Uint8Array): Promise<void> {
    this.chain = this.chain.then(async () => {
      await this.advance(chunk.length);
      await this.writer!.append(chunk);
    });
    return this.chain;
  }

  private async advance(len: number): Promise<void> {
    while (this.leftInTensor === 0) {
      if (!this.writer || this.tensorInShard >= this.plan[this.shard]!.specs.length) {
        if (this.writer) await this.writer.close();
        this.shard++;
        if (this.shard >= this.plan.length) throw new MlaError("BAD_ARGUMENT", `${this.dir}: more data than the planned tensors hold`, "this is a bug in the caller");
        this.writer = new SafetensorsWriter(path.join(this.dir, this.plan[this.shard]!.file), this.plan[this.shard]!.specs, this.opts.metadata);
        this.tensorInShard = 0;
      }
      const s = this.plan[this.shard]!.specs[this.tensorInShard++]!;
      this.leftInTensor = numel(s.shape) * DTYPE_BYTES[s.dtype];
    }
    if (len > this.leftInTensor) throw new MlaError("BAD_ARGUMENT", `${this.dir}: a chunk of ${len} bytes crosses a tensor boundary`, "this is a bug in the caller");
    this.leftInTensor -= len;
  }

  /**
   * Lets go of a checkpoint that will not be finished (an error, an abort): the open shard's file is
   * closed once queued appends settle, so a long-lived process does not keep a descriptor per
   * stopped write. The caller removes the folder.
   */
  async abandon(): Promise<void> {
    await this.chain.catch(() => {});
    const w = this.writer;
    this.writer = null;
    await w?.abandon();
  }

  async close(): Promise<void> {
    await this.chain;
    if (this.writer) await this.writer.close();
    const last = this.plan[this.plan.length - 1]!;
    const nothingPlanned = this.plan.length === 1 && last.specs.length === 0;
    const allWritten = this.leftInTensor === 0 && this.shard === this.plan.length - 1 && this.tensorInShard === last.specs.length;
    if (!allWritten && !nothingPlanned) throw new MlaError("BAD_ARGUMENT", `${this.dir}: the checkpoint was closed before all tensors were written`, "this is a bug in the caller");
    if (this.plan.length > 1) {
      let total = 0;
      const weightMap: Record<string, string> = {};
      for (const p of this.plan)
        for (const s of p.specs) {
          weightMap[s.name] = p.file;
          total += numel(s.shape) * DTYPE_BYTES[s.dtype];
        }
      fs.writeFileSync(path.join(this.dir, INDEX_FILE), JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }, null, 2) + "\n");
    }
  }
}
