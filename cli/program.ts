import { Command } from 'commander';
import { registerAggregatorCommands } from './aggregator-command.ts';
import { registerAuditCommand } from './audit-command.ts';
import { registerCoordinatorCommands } from './coordinator-command.ts';
import { registerDatasetCommands } from './dataset-command.ts';
import { registerEvalCommand } from './eval-command.ts';
import { registerLocalCommand } from './local-command.ts';
import { registerModelCommands } from './model-command.ts';
import { registerReportCommand } from './report-command.ts';
import { registerStatusCommand } from './status-command.ts';
import { registerTrainCommand } from './train-command.ts';
import { registerWorkerCommands } from './worker-command.ts';

/** The whole CLI, unparsed (main.ts runs it; tests read its commands and options). */
export function buildProgram(): Command {
  const program = new Command('vgg-train')
    .description('Distributed data-parallel trainer for the VGG networks (Simonyan & Zisserman 2014)')
    .showHelpAfterError()
    .exitOverride();
  registerTrainCommand(program);
  registerModelCommands(program);
  registerDatasetCommands(program);
  registerCoordinatorCommands(program);
  registerWorkerCommands(program);
  registerAggregatorCommands(program);
  registerLocalCommand(program);
  registerStatusCommand(program);
  registerAuditCommand(program);
  registerReportCommand(program);
  registerEvalCommand(program);
  return program;
}
