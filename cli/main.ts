import { CommanderError } from 'commander';
import { VggError } from '../shared/errors.ts';
import { buildProgram } from './program.ts';

/** The only place that exits: bad flags and config exit 2, other failures 1. */
try {
  await buildProgram().parseAsync(process.argv);
} catch (err) {
  if (err instanceof CommanderError) {
    process.exit(err.exitCode === 0 ? 0 : 2);
  }
  const cause = (err as { cause?: unknown }).cause;
  const e = (err instanceof VggError ? err : cause instanceof VggError ? cause : err) as Error & { code?: string };
  process.stderr.write(`vgg-train: ${e.message}${e.code !== undefined ? ` (${e.code})` : ''}\n`);
  process.exit(e instanceof VggError && e.code === 'VGG_ERR_CONFIG' ? 2 : 1);
}
