import { Command, CommanderError } from 'commander';
import { VggError } from '../shared/errors.ts';
import { registerDatasetCommands } from './dataset-command.ts';
import { registerModelCommands } from './model-command.ts';
import { registerTrainCommand } from './train-command.ts';
import { registerCoordinatorCommands } from './coordinator-command.ts';
import { registerWorkerCommands } from './worker-command.ts';
import { registerLocalCommand } from './local-command.ts';
import { registerStatusCommand } from './status-command.ts';
import { registerAuditCommand } from './audit-command.ts';

const program = new Command('vgg-train')
  .description('Distributed data-parallel trainer for the VGG networks (Simonyan & Zisserman 2014)')
  .showHelpAfterError()
  .exitOverride();

registerTrainCommand(program);
registerModelCommands(program);
registerDatasetCommands(program);
registerCoordinatorCommands(program);
registerWorkerCommands(program);
registerLocalCommand(program);
registerStatusCommand(program);
registerAuditCommand(program);

/** The only place that exits: bad flags and config exit 2, other failures 1. */
try {
  await program.parseAsync(process.argv);
} catch (err) {
  if (err instanceof CommanderError) {
    process.exit(err.exitCode === 0 ? 0 : 2);
  }
  const cause = (err as { cause?: unknown }).cause;
  const e = (err instanceof VggError ? err : cause instanceof VggError ? cause : err) as Error & { code?: string };
  process.stderr.write(`vgg-train: ${e.message}${e.code !== undefined ? ` (${e.code})` : ''}\n`);
  process.exit(e instanceof VggError && e.code === 'VGG_ERR_CONFIG' ? 2 : 1);
}
