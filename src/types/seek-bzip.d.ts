declare module "seek-bzip" {
  /** Decodes a whole bzip2 buffer. */
  export function decode(input: Buffer | Uint8Array, output?: Buffer): Buffer;
  const Bunzip: { decode: typeof decode };
  export default Bunzip;
}
