/**
 * A CPU stand-in for the CUDA backend's arenas (test helper): the reference backend behind a proxy
 * that frees, as CudaBackend.arena does, every tensor a call makes inside an open arena when the arena
 * ends (except the kept ones, which join the enclosing arena), and that throws on any later use of a
 * freed tensor. So a use-after-free that the GPU would turn into garbage or a crash (a kept matrix
 * built inside an arena, a cache row freed under its cache) fails a CPU test, and `live` counts the
 * tensors nobody freed.
 */
import { ReferenceBackend } from "../../src/backends/reference/index.js";
import type { ArenaOptions, Backend } from "../../src/tensor/backend.js";
import { Tensor } from "../../src/tensor/tensor.js";

export interface ArenaCheckBackend {
  backend: Backend;
  /** Storages made and not freed (weights included). */
  live: () => number;
  /** The backend method that made each live storage, counted (what a leak is made of). */
  liveMakers: () => Map<string, number>;
}

export function arenaCheckBackend(): ArenaCheckBackend {
  const target = new ReferenceBackend();
  const known = new WeakSet<object>();
  const freed = new WeakSet<object>();
  const live = new Set<object>();
  const maker = new WeakMap<object, string>();
  let calling = "";
  const arenas: object[][] = [];
  const storageOf = (t: Tensor) => t.storage as object;
  const check = (x: unknown, depth = 0): void => {
    if (x instanceof Tensor) {
      if (freed.has(storageOf(x))) throw new Error(`use after free: a tensor [${x.shape}] freed by an arena is read again`);
    } else if (Array.isArray(x) && depth < 2) x.forEach((y) => check(y, depth + 1));
    else if (x && typeof x === "object" && depth < 1 && Object.getPrototypeOf(x) === Object.prototype) Object.values(x).forEach((y) => check(y, depth + 1));
  };
  const register = (x: unknown, depth = 0): void => {
    if (x instanceof Tensor) {
      const s = storageOf(x);
      if (known.has(s)) return;
      known.add(s);
      live.add(s);
      maker.set(s, calling);
      arenas[arenas.length - 1]?.push(s);
    } else if (Array.isArray(x) && depth < 2) x.forEach((y) => register(y, depth + 1));
    else if (x && typeof x === "object" && depth < 1 && Object.getPrototypeOf(x) === Object.prototype) Object.values(x).forEach((y) => register(y, depth + 1));
  };
  const free = (s: object) => {
    if (!live.delete(s)) return;
    freed.add(s);
  };
  const proxy: Backend = new Proxy(target, {
    get(t, prop, receiver) {
      if (prop === "arena")
        return <T>(fn: () => T, opts: ArenaOptions<T> = {}): T => {
          const mine: object[] = [];
          arenas.push(mine);
          let kept = new Set<object>();
          try {
            const result = fn();
            if (opts.keep) kept = new Set(opts.keep(result).map(storageOf));
            return result;
          } finally {
            arenas.pop();
            for (const s of mine) {
              if (!kept.has(s)) free(s);
              else arenas[arenas.length - 1]?.push(s);
            }
          }
        };
      if (prop === "persistent")
        return <T>(fn: () => T): T => {
          const open = arenas.splice(0);
          try {
            return fn();
          } finally {
            arenas.push(...open);
          }
        };
      if (prop === "free") return (x: Tensor) => free(storageOf(x));
      const v = Reflect.get(t, prop, receiver) as unknown;
      if (typeof v !== "function" || prop === "constructor") return v;
      return (...args: unknown[]) => {
        check(args);
        const outer = calling;
        calling = outer || String(prop);
        try {
          const r = Reflect.apply(v as (...a: unknown[]) => unknown, receiver, args);
          register(r);
          return r;
        } finally {
          calling = outer;
        }
      };
    },
  });
  const liveMakers = () => {
    const m = new Map<string, number>();
    for (const s of live) m.set(maker.get(s) ?? "?", (m.get(maker.get(s) ?? "?") ?? 0) + 1);
    return m;
  };
  return { backend: proxy, live: () => live.size, liveMakers };
}
