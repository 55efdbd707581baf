import type { Command } from 'commander';
import { formatSummary, summarize } from '../shared/model-summary.ts';
import { intOption, numberOption, choiceOption } from '../shared/option-parsers.ts';
import { CONFIG_NAMES, resolveModelConfig } from '../shared/vgg-configs.ts';

export function registerModelCommands(program: Command): void {
  const model = program.command('model').description('inspect the model zoo');
  model.command('info')
    .description('layer table: output shapes, parameters per layer, totals')
    .option('--config <name>', `column of Table 1: ${CONFIG_NAMES.join(', ')}`, choiceOption('--config', CONFIG_NAMES), 'D')
    .option('--batch-norm', 'batch norm after every conv (bias-free convs)', false)
    .option('--num-classes <n>', 'classes', intOption('--num-classes', 2), 1000)
    .option('--input-size <px>', 'input side', intOption('--input-size', 32), 224)
    .option('--width <m>', 'conv channel multiplier', numberOption('--width', 0, 4, true), 1)
    .option('--fc-units <n>', 'units of fc6 and fc7', intOption('--fc-units', 1), 4096)
    .option('--json', 'print one JSON object', false)
    .action((o: { config: (typeof CONFIG_NAMES)[number]; batchNorm: boolean; numClasses: number; inputSize: number; width: number; fcUnits: number; json: boolean }) => {
      const cfg = resolveModelConfig({
        config: o.config, batchNorm: o.batchNorm, numClasses: o.numClasses, inputSize: o.inputSize,
        widthMultiplier: o.width, fcUnits: o.fcUnits,
      });
      const s = summarize(cfg);
      process.stdout.write(o.json ? `${JSON.stringify(s)}\n` : `${formatSummary(s)}\n`);
    });
}
