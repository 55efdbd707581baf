import type { Command } from 'commander';
import { indexDataset } from '../coordinator/dataset-index.ts';
import { importFashionMnist } from '../coordinator/fashion-mnist-import.ts';
import { ConfigError } from '../shared/errors.ts';
import { intOption } from '../shared/option-parsers.ts';

export function registerDatasetCommands(program: Command): void {
  const dataset = program.command('dataset').description('prepare and index datasets');
  dataset.command('import')
    .description('convert a dataset into an ImageNet-layout tree of JPEGs (supported: fashion-mnist)')
    .argument('<name>', 'dataset name')
    .requiredOption('--out <dir>', 'output folder')
    .option('--source <dir>', 'folder with the idx files (default: Debian dataset-fashion-mnist)')
    .option('--train-limit <n>', 'at most n training images', intOption('--train-limit', 1))
    .option('--val-limit <n>', 'at most n test images', intOption('--val-limit', 1))
    .action(async (name: string, o: { out: string; source?: string; trainLimit?: number; valLimit?: number }) => {
      if (name !== 'fashion-mnist') throw new ConfigError(`dataset import: expected fashion-mnist, got ${JSON.stringify(name)}`);
      const counts = await importFashionMnist({
        out: o.out, source: o.source, trainLimit: o.trainLimit, valLimit: o.valLimit,
        onProgress: (d, t) => { if (process.stderr.isTTY) process.stderr.write(`\r${d}/${t}`); },
      });
      if (process.stderr.isTTY) process.stderr.write('\n');
      process.stdout.write(`${JSON.stringify({ out: o.out, ...counts })}\n`);
    });
  dataset.command('index')
    .description('index an ImageNet-layout tree (cached as a manifest) and print its counts')
    .requiredOption('--data <dir>', 'dataset root')
    .option('--rebuild', 'ignore a cached manifest', false)
    .action(async (o: { data: string; rebuild: boolean }) => {
      const index = await indexDataset(o.data, {
        rebuild: o.rebuild,
        onProgress: (d, t) => { if (process.stderr.isTTY) process.stderr.write(`\rindexing classes ${d}/${t}`); },
      });
      if (process.stderr.isTTY) process.stderr.write('\n');
      process.stdout.write(`${JSON.stringify({ root: index.root, classes: index.classes.length, train: index.train.length, val: index.val.length })}\n`);
    });
}
