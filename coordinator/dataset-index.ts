import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, rename, stat, writeFile } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { DataError } from '../shared/errors.ts';

/** One image of the dataset; `label` indexes `classes`. */
export interface Sample {
  /** Path relative to the dataset root. */
  path: string;
  label: number;
}

export interface DatasetIndex {
  version: 1;
  root: string;
  /** Sorted wnids (class folder names); the class index is the position here. */
  classes: string[];
  /** wnid -> human name, from a synset-words file when present. */
  classNames: Record<string, string>;
  train: Sample[];
  val: Sample[];
  /** Modification times the index was built from; a change invalidates the cache. */
  fingerprint: string;
}

const IMAGE_EXT = /\.(jpe?g|png)$/i;
const SYNSET_FILES = ['synset_words.txt', 'LOC_synset_mapping.txt', 'synsets.txt'];
const VAL_LABEL_FILES = ['LOC_val_solution.csv', 'val.txt', 'val_labels.txt', 'ILSVRC2012_validation_ground_truth.txt'];

export interface IndexOptions {
  /** Where the manifest goes; default `<root>/.vgg-train-index.json`, or the temp dir if root is read-only. */
  manifestPath?: string;
  /** Called while scanning class folders: (done, total). */
  onProgress?: (done: number, total: number) => void;
  /** Rebuild even if a valid manifest exists. */
  rebuild?: boolean;
}

async function listDirs(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { withFileTypes: true });
  return entries.filter((e) => e.isDirectory() && !e.name.startsWith('.')).map((e) => e.name).sort();
}

async function listImages(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { withFileTypes: true });
  return entries.filter((e) => e.isFile() && IMAGE_EXT.test(e.name)).map((e) => e.name).sort();
}

async function fingerprintOf(root: string): Promise<string> {
  const h = createHash('sha256');
  for (const sub of ['train', 'val']) {
    const dir = path.join(root, sub);
    if (!existsSync(dir)) continue;
    h.update(`${sub}:${(await stat(dir)).mtimeMs}`);
    for (const d of await listDirs(dir)) h.update(`${d}:${(await stat(path.join(dir, d))).mtimeMs}`);
  }
  return h.digest('hex').slice(0, 16);
}

async function readSynsets(root: string): Promise<Record<string, string>> {
  for (const name of SYNSET_FILES) {
    const file = path.join(root, name);
    if (!existsSync(file)) continue;
    const names: Record<string, string> = {};
    for (const line of (await readFile(file, 'utf8')).split('\n')) {
      const m = /^(\S+)\s+(.+)$/.exec(line.trim());
      if (m?.[1] !== undefined && m[2] !== undefined) names[m[1]] = m[2];
    }
    return names;
  }
  return {};
}

/** Flat val/ with a label file: LOC_val_solution.csv (ImageId,PredictionString) or `<file> <label>` lines. */
async function readFlatVal(root: string, classes: string[]): Promise<Sample[]> {
  const valDir = path.join(root, 'val');
  const files = new Map((await listImages(valDir)).map((f) => [f.replace(IMAGE_EXT, ''), f]));
  const labelFile = VAL_LABEL_FILES.map((f) => path.join(root, f)).find((f) => existsSync(f));
  if (labelFile === undefined) {
    throw new DataError('VGG_ERR_DATASET', `${valDir}: expected class folders or a label file (${VAL_LABEL_FILES.join(', ')}) in ${root}, got neither`);
  }
  const classIndex = new Map(classes.map((c, i) => [c, i]));
  const samples: Sample[] = [];
  const lines = (await readFile(labelFile, 'utf8')).split('\n').map((l) => l.trim()).filter((l) => l.length > 0);
  const isCsv = labelFile.endsWith('.csv');
  for (const [lineNo, line] of lines.entries()) {
    if (isCsv && lineNo === 0 && line.startsWith('ImageId')) continue;
    const [id, rest] = isCsv ? line.split(',', 2) : line.split(/\s+/, 2);
    const token = isCsv ? rest?.split(/\s+/)[0] : rest;
    if (id === undefined || token === undefined) {
      throw new DataError('VGG_ERR_DATASET', `${labelFile}:${lineNo + 1}: expected "<file> <label>", got ${JSON.stringify(line)}`);
    }
    const label = classIndex.get(token) ?? (/^\d+$/.test(token) ? Number(token) : undefined);
    if (label === undefined || label >= classes.length) {
      throw new DataError('VGG_ERR_DATASET', `${labelFile}:${lineNo + 1}: expected a wnid or class index < ${classes.length}, got ${JSON.stringify(token)}`);
    }
    const file = files.get(id.replace(IMAGE_EXT, ''));
    if (file !== undefined) samples.push({ path: path.join('val', file), label });
  }
  return samples;
}

/**
 * Indexes an ImageNet-layout tree: `train/<wnid>/*.JPEG` (case-insensitive,
 * PNG too) and `val/` as class folders or flat with a label file. Class index
 * = position of the wnid in sorted order. The result is cached as a manifest
 * and reused while the folders' modification times are unchanged.
 */
export async function indexDataset(rootArg: string, options: IndexOptions = {}): Promise<DatasetIndex> {
  const root = path.resolve(rootArg);
  const trainDir = path.join(root, 'train');
  if (!existsSync(trainDir)) {
    throw new DataError('VGG_ERR_DATASET', `--data ${rootArg}: expected an ImageNet-layout tree with train/<class>/ folders, got no ${trainDir}`);
  }
  const fingerprint = await fingerprintOf(root);
  const defaultManifest = path.join(root, '.vgg-train-index.json');
  const fallbackManifest = path.join(tmpdir(), `vgg-train-index-${createHash('sha256').update(root).digest('hex').slice(0, 12)}.json`);
  const candidates = options.manifestPath !== undefined ? [options.manifestPath] : [defaultManifest, fallbackManifest];
  if (!options.rebuild) {
    for (const file of candidates) {
      if (!existsSync(file)) continue;
      try {
        const cached = JSON.parse(await readFile(file, 'utf8')) as DatasetIndex;
        if (cached.version === 1 && cached.root === root && cached.fingerprint === fingerprint) return cached;
      } catch { /* a corrupt manifest is rebuilt */ }
    }
  }

  const classes = await listDirs(trainDir);
  if (classes.length === 0) {
    throw new DataError('VGG_ERR_DATASET', `${trainDir}: expected at least one class folder, got none`);
  }
  const train: Sample[] = [];
  for (const [label, wnid] of classes.entries()) {
    for (const f of await listImages(path.join(trainDir, wnid))) train.push({ path: path.join('train', wnid, f), label });
    options.onProgress?.(label + 1, classes.length);
  }
  let val: Sample[] = [];
  const valDir = path.join(root, 'val');
  if (existsSync(valDir)) {
    const valClasses = await listDirs(valDir);
    if (valClasses.length > 0) {
      const classIndex = new Map(classes.map((c, i) => [c, i]));
      for (const wnid of valClasses) {
        const label = classIndex.get(wnid);
        if (label === undefined) {
          throw new DataError('VGG_ERR_DATASET', `${path.join(valDir, wnid)}: expected a class that train/ has, got unknown class ${JSON.stringify(wnid)}`);
        }
        for (const f of await listImages(path.join(valDir, wnid))) val.push({ path: path.join('val', wnid, f), label });
      }
    } else {
      val = await readFlatVal(root, classes);
    }
  }
  const index: DatasetIndex = { version: 1, root, classes, classNames: await readSynsets(root), train, val, fingerprint };
  for (const file of candidates) {
    try {
      await mkdir(path.dirname(file), { recursive: true });
      const tmp = `${file}.${process.pid}.tmp`;
      await writeFile(tmp, JSON.stringify(index));
      await rename(tmp, file);
      break;
    } catch { /* read-only root: try the next location */ }
  }
  return index;
}
