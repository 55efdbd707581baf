import { readFileSync } from 'node:fs';
import { ConfigError } from './errors.ts';

/** `--update-threads` of the commands that aggregate (coordinator, aggregator and worker start): flags, help, parser (simd.ts's updateThreads). */
export const UPDATE_THREADS_OPTION = [
  '--update-threads <n>',
  'threads for the SGD update of the aggregator shard this process runs, 1-64 (env VGG_UPDATE_THREADS; default 1). More than 1 makes the shard\'s memory shared, which slows the copies from its sockets: measure before raising it',
  intOption('--update-threads', 1, 64),
] as const;

/** commander argument parsers that throw ConfigError naming the option. */
export function intOption(option: string, min = 0, max = Number.MAX_SAFE_INTEGER) {
  return (value: string): number => {
    const n = Number(value);
    if (!/^-?\d+$/.test(value.trim()) || !Number.isSafeInteger(n) || n < min || n > max) {
      throw new ConfigError(`${option}: expected an integer in [${min}, ${max === Number.MAX_SAFE_INTEGER ? 'inf' : max}], got ${JSON.stringify(value)}`);
    }
    return n;
  };
}

/** true|1|yes or false|0|no (run options and the environment variables that mirror them). */
export function boolOption(option: string) {
  return (value: string): boolean => {
    if (['true', '1', 'yes'].includes(value)) return true;
    if (['false', '0', 'no'].includes(value)) return false;
    throw new ConfigError(`${option}: expected true or false, got ${JSON.stringify(value)}`);
  };
}

/** An environment variable read as boolOption reads it; `fallback` when it is unset or empty. */
export function boolEnv(name: string, fallback: boolean, env: NodeJS.ProcessEnv = process.env): boolean {
  const v = env[name];
  return v === undefined || v === '' ? fallback : boolOption(name)(v);
}

export function numberOption(option: string, min = -Infinity, max = Infinity, exclusiveMin = false) {
  return (value: string): number => {
    const n = Number(value);
    const low = exclusiveMin ? n > min : n >= min;
    if (value.trim() === '' || !Number.isFinite(n) || !low || n > max) {
      throw new ConfigError(`${option}: expected a number in ${exclusiveMin ? '(' : '['}${min}, ${max}], got ${JSON.stringify(value)}`);
    }
    return n;
  };
}

export function choiceOption<T extends string>(option: string, choices: readonly T[]) {
  return (value: string): T => {
    if (!(choices as readonly string[]).includes(value)) {
      throw new ConfigError(`${option}: expected one of ${choices.join(', ')}, got ${JSON.stringify(value)}`);
    }
    return value as T;
  };
}

/** `a,b` -> ['a', 'b'], each one of `choices`. */
export function choiceListOption<T extends string>(option: string, choices: readonly T[]) {
  return (value: string): T[] => {
    const parts = value.split(',').map((p) => p.trim());
    if (parts.some((p) => !(choices as readonly string[]).includes(p))) {
      throw new ConfigError(`${option}: expected a comma-separated list of ${choices.join(', ')}, got ${JSON.stringify(value)}`);
    }
    return parts as T[];
  };
}

/** `256` or `256:512` (a jitter range). */
export function scaleRangeOption(option: string) {
  return (value: string): [number, number] => {
    const m = /^(\d+)(?::(\d+))?$/.exec(value.trim());
    const lo = Number(m?.[1]);
    const hi = Number(m?.[2] ?? m?.[1]);
    if (m === null || lo < 1 || hi < lo) {
      throw new ConfigError(`${option}: expected S or Smin:Smax with 0 < Smin <= Smax, got ${JSON.stringify(value)}`);
    }
    return [lo, hi];
  };
}

/** `5,7` -> [5, 7]; empty -> []. */
export function intListOption(option: string) {
  return (value: string): number[] => {
    if (value.trim() === '') return [];
    const parts = value.split(',').map((p) => p.trim());
    if (parts.some((p) => !/^\d+$/.test(p) || Number(p) < 1)) {
      throw new ConfigError(`${option}: expected a comma-separated list of positive integers like 5,7, got ${JSON.stringify(value)}`);
    }
    return parts.map(Number);
  };
}

/** `value` if it is a ws:// or wss:// URL (undefined passes); else a ConfigError naming `option`. */
export function wsUrl<T extends string | undefined>(option: string, value: T): T {
  if (value !== undefined && !/^wss?:\/\//.test(value)) throw new ConfigError(`${option}: expected a ws:// or wss:// URL, got ${JSON.stringify(value)}`);
  return value;
}

/**
 * The run token from VGG_TOKEN, else from the file named by VGG_TOKEN_FILE
 * (Docker and Kubernetes secrets are mounted as files), else ''.
 */
export function tokenFromEnv(env: NodeJS.ProcessEnv = process.env): string {
  if (env.VGG_TOKEN !== undefined && env.VGG_TOKEN !== '') return env.VGG_TOKEN;
  const file = env.VGG_TOKEN_FILE;
  if (file === undefined || file === '') return '';
  try {
    return readFileSync(file, 'utf8').trim();
  } catch (err) {
    throw new ConfigError(`VGG_TOKEN_FILE: expected a readable file holding the token, got ${JSON.stringify(file)} (${(err as Error).message})`);
  }
}
