import { pino, type Logger } from 'pino';

/**
 * Logs are JSON lines on stderr (human output goes to stdout). The level comes
 * from VGG_LOG_LEVEL (default `info`; tests set `silent` or `warn`).
 */
export function createLogger(bindings: Record<string, unknown> = {}): Logger {
  const level = process.env.VGG_LOG_LEVEL ?? 'info';
  return pino({ level, base: { pid: process.pid, ...bindings } }, pino.destination(2));
}

let rootLogger: Logger | undefined;

/** The process-wide logger, created on first use. */
export function log(): Logger {
  rootLogger ??= createLogger();
  return rootLogger;
}

export type { Logger };
