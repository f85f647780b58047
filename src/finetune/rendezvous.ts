/**
 * How the ranks of a data-parallel run find each other: rank 0 makes NCCL's unique id and serves it
 * over TCP at the master address (`--master HOST:PORT`, 127.0.0.1 and a free port on one machine);
 * every other rank connects, retrying until rank 0 listens, and reads it. Rank 0 joins the
 * communicator only once every rank has the id, since joining blocks its thread (and so its server)
 * until all have joined.
 */
import net from "node:net";
import { MlaError } from "../errors.js";

const MAGIC = Buffer.from("MLA1");
export const ID_BYTES = 128;

export interface Master {
  host: string;
  port: number;
}

/** "HOST:PORT" → its parts; `flag` names the option in the error. */
export function parseMaster(text: string, flag = "--master"): Master {
  const m = /^(.+):(\d{1,5})$/.exec(text);
  const port = m ? Number(m[2]) : NaN;
  if (!m || !(port >= 1 && port <= 65535)) throw new MlaError("BAD_ARGUMENT", `${flag} ${text} is not HOST:PORT`, "e.g. --master 10.0.0.1:29500 (the machine of node 0 and a free TCP port on it)");
  return { host: m[1]!.replace(/^\[(.*)\]$/, "$1"), port };
}

/** A TCP port free on this machine now (for a run's own rendezvous on one machine). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

/**
 * Rank 0's side: listens at `master` and sends `id` to every connection. `listening` settles once the
 * server listens (an address in use is an error naming it); `served` once `clients` ranks have had the
 * id (then the server closes), or fails after `timeoutMs`.
 */
export function serveId(master: Master, id: Uint8Array, clients: number, timeoutMs = 600_000): { listening: Promise<void>; served: Promise<void> } {
  let sent = 0;
  const server = net.createServer((sock) => {
    sock.on("error", () => {}); // a rank that went away is the launcher's to report
    sock.end(Buffer.concat([MAGIC, Buffer.from(id)]), () => {
      if (++sent >= clients) server.close();
    });
  });
  let timer: NodeJS.Timeout | undefined;
  const listening = new Promise<void>((resolve, reject) => {
    server.once("error", (e: NodeJS.ErrnoException) =>
      reject(new MlaError("IO", `rank 0 cannot listen at ${master.host}:${master.port}: ${e.code ?? e.message}`, e.code === "EADDRINUSE" ? "choose another port in --master" : "--master must be an address of this machine (node 0)")),
    );
    server.listen(master.port, master.host, () => resolve());
  });
  const served =
    clients === 0
      ? listening.then(() => void server.close())
      : listening.then(
          () =>
            new Promise<void>((resolve, reject) => {
              server.on("close", () => {
                clearTimeout(timer);
                resolve();
              });
              timer = setTimeout(() => {
                server.close();
                reject(new MlaError("IO", `only ${sent} of the ${clients} other ranks fetched NCCL's id from ${master.host}:${master.port} in ${timeoutMs / 1000} s`, "check that every node runs the same command with its own --node-rank, and that the port is reachable from them"));
              }, timeoutMs);
            }),
        );
  served.catch(() => {}); // a caller whose `listening` failed never waits for it
  return { listening, served };
}

/** Any other rank's side: connects to `master` (retrying while nobody listens yet) and reads the id. */
export async function fetchId(master: Master, timeoutMs = 600_000): Promise<Uint8Array> {
  const deadline = Date.now() + timeoutMs;
  let last = "";
  while (Date.now() < deadline) {
    try {
      return await readOnce(master);
    } catch (e) {
      last = (e as Error).message;
      await new Promise((r) => setTimeout(r, 200));
    }
  }
  throw new MlaError("IO", `no rank 0 answered at ${master.host}:${master.port} in ${timeoutMs / 1000} s (${last})`, "start node 0 too, with the same --master; check that the port is reachable from this machine");
}

function readOnce(master: Master): Promise<Uint8Array> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    const sock = net.connect(master.port, master.host);
    sock.on("data", (c: Buffer) => chunks.push(c));
    sock.on("error", (e: NodeJS.ErrnoException) => reject(new Error(e.code ?? e.message)));
    sock.on("end", () => {
      const all = Buffer.concat(chunks);
      if (all.length !== MAGIC.length + ID_BYTES || !all.subarray(0, MAGIC.length).equals(MAGIC)) reject(new Error(`${all.length} bytes that are not an mha2mla rank 0's answer`));
      else resolve(new Uint8Array(all.subarray(MAGIC.length)));
    });
  });
}
