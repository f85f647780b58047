/**
 * Counting the tensors a test's code keeps alive: `base` behind a proxy that adds the storage of what its
 * counted methods return to `live` and removes it on free. Calls made while `inside()` holds (a model
 * method whose own intermediates the test leaves to the garbage collector on the reference backend) are
 * not counted; `wrap` may replace a method outright (e.g. make one call throw).
 */
import type { Backend } from "../../src/tensor/backend.js";

type Method = (...a: unknown[]) => unknown;

export function trackLive(base: Backend, o: { counted: (key: PropertyKey) => boolean; inside: () => boolean; wrap?: (key: PropertyKey, f: Method, receiver: unknown) => Method | undefined }) {
  const live = new Set<unknown>();
  /** `t` (a tensor, or anything) counted live from now. */
  const add = <T>(t: T): T => {
    if (t && typeof t === "object" && "storage" in t) live.add((t as { storage: unknown }).storage);
    return t;
  };
  const backend = new Proxy(base, {
    get(target, key, receiver) {
      const v = Reflect.get(target, key, receiver) as unknown;
      if (typeof v !== "function") return v;
      const f = v as Method;
      if (key === "free") return (t: { storage: unknown }) => (live.delete(t.storage), f.call(receiver, t));
      const replaced = o.wrap?.(key, f, receiver);
      if (replaced) return replaced;
      if (o.counted(key)) return (...args: unknown[]) => (o.inside() ? f.apply(receiver, args) : add(f.apply(receiver, args)));
      return f.bind(receiver);
    },
  });
  return { backend, live, add };
}
