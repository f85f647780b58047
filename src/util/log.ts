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

/** `log` with each warning said once: for work run twice on the same inputs (a conversion's before and after evaluations). */
export function warningsOnce(log: Logger): Logger {
  const said = new Set<string>();
  return {
    info: (m) => log.info(m),
    warn: (m) => {
      if (said.has(m)) return;
      said.add(m);
      log.warn(m);
    },
  };
}
