/** Injected logger: the library never writes to the console directly. */
export interface Logger {
  info(msg: string): void;
  warn(msg: string): void;
}

export const silentLogger: Logger = { info: () => {}, warn: () => {} };

export const stderrLogger: Logger = {
  info: (m) => process.stderr.write(m + "\n"),
  warn: (m) => process.stderr.write("warning: " + m + "\n"),
};
