/**
 * close() lets the requests in flight finish, but a request can wait on its client instead of on the
 * model: a body that stopped arriving half-way, or a streamed answer the client stopped reading (its
 * socket's buffers fill, the last bytes never leave). Such a connection kept close() waiting for
 * Node's request timeout (300 s) or for ever. While closing, a connection that waits on its client
 * and has moved no bytes for `stallMs` is cut; one waiting on the model (a prompt in the queue, a
 * long answer not streamed) is not, however long it takes.
 */
import type http from "node:http";
import type net from "node:net";

/** Why `socket` waits on its client (null: it does not), given the request it carries now. */
function waitingOnClient(socket: net.Socket, req: http.IncomingMessage | undefined): string | null {
  if (req && !req.complete) return "its request body stopped arriving";
  if (socket.writableLength > 0) return "its client stopped reading the response";
  return null;
}

/** Bytes that have moved on `socket`: read from it, and handed to the system (not those still queued). */
const moved = (socket: net.Socket) => socket.bytesRead + socket.bytesWritten - socket.writableLength;

/** The connections of one server and the request each carries now, so that close() can cut the stalled ones. */
export class ConnectionWatch {
  private readonly sockets = new Set<net.Socket>();
  private readonly requests = new WeakMap<net.Socket, http.IncomingMessage>();

  constructor(server: http.Server) {
    server.on("connection", (socket: net.Socket) => {
      this.sockets.add(socket);
      socket.once("close", () => this.sockets.delete(socket));
    });
    // A keep-alive connection's later request replaces its earlier one.
    server.on("request", (req: http.IncomingMessage) => this.requests.set(req.socket, req));
  }

  /**
   * Until the returned function is called, cuts (destroys) every connection that waits on its client
   * and has moved no bytes for `stallMs`, counted from the call at the earliest, telling `onCut`
   * which and why. Checked four times per `stallMs` (at least once a second), so a cut comes at most
   * a quarter of `stallMs` (1 s) late.
   */
  cutStalled(stallMs: number, onCut: (socket: net.Socket, why: string) => void): () => void {
    const last = new Map<net.Socket, { bytes: number; at: number }>();
    const check = () => {
      const now = performance.now();
      for (const socket of this.sockets) {
        const bytes = moved(socket);
        const seen = last.get(socket);
        if (!seen || seen.bytes !== bytes) {
          last.set(socket, { bytes, at: now });
          continue;
        }
        if (now - seen.at < stallMs || socket.destroyed) continue;
        const why = waitingOnClient(socket, this.requests.get(socket));
        if (why === null) continue;
        onCut(socket, why);
        socket.destroy();
        last.delete(socket);
      }
    };
    check();
    // Not unref'd: a paused socket keeps no event loop alive, and close() must get to cut it.
    const timer = setInterval(check, Math.min(1000, Math.max(10, stallMs / 4)));
    return () => clearInterval(timer);
  }
}
