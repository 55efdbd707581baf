import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { indexDataset } from '../../coordinator/dataset-index.ts';
import { DataError } from '../../shared/errors.ts';
import { tempDir, writeImage, writeTree } from '../helpers/images.ts';

describe('dataset index', () => {
  test('train/<wnid>/ and val/<wnid>/ folders; class index = sorted wnids; extensions case-insensitive', async () => {
    const root = tempDir('idx');
    await writeTree(root, ['n02', 'n01'], 2);
    await writeImage(path.join(root, 'train', 'n01', 'extra.jpeg'));
    await writeImage(path.join(root, 'train', 'n01', 'pic.png'), { kind: 'png' });
    await writeFile(path.join(root, 'train', 'n01', 'notes.txt'), 'not an image');
    await writeFile(path.join(root, 'synset_words.txt'), 'n01 tench\nn02 goldfish\n');
    const index = await indexDataset(root);
    assert.deepEqual(index.classes, ['n01', 'n02']);
    assert.equal(index.train.length, 6);
    assert.equal(index.train.filter((s) => s.label === 0).length, 4);
    assert.deepEqual(index.val.map((s) => s.label).sort(), [0, 1]);
    assert.equal(index.classNames.n02, 'goldfish');
  });

  test('flat val/ with LOC_val_solution.csv', async () => {
    const root = tempDir('idx-csv');
    await writeTree(root, ['n01', 'n02'], 1, 0);
    await writeImage(path.join(root, 'val', 'ILSVRC2012_val_00000001.JPEG'));
    await writeImage(path.join(root, 'val', 'ILSVRC2012_val_00000002.JPEG'));
    await writeFile(path.join(root, 'LOC_val_solution.csv'),
      'ImageId,PredictionString\nILSVRC2012_val_00000001,n02 1 2 3 4\nILSVRC2012_val_00000002,n01 5 6 7 8 n01 1 1 2 2\n');
    const index = await indexDataset(root);
    assert.deepEqual(index.val, [
      { path: path.join('val', 'ILSVRC2012_val_00000001.JPEG'), label: 1 },
      { path: path.join('val', 'ILSVRC2012_val_00000002.JPEG'), label: 0 },
    ]);
  });

  test('flat val/ with a "<file> <label>" text file and a bad line is rejected with its line number', async () => {
    const root = tempDir('idx-txt');
    await writeTree(root, ['n01', 'n02'], 1, 0);
    await writeImage(path.join(root, 'val', 'a.JPEG'));
    await writeFile(path.join(root, 'val.txt'), 'a.JPEG 1\n');
    assert.deepEqual((await indexDataset(root)).val, [{ path: path.join('val', 'a.JPEG'), label: 1 }]);
    await writeFile(path.join(root, 'val.txt'), 'a.JPEG 7\n');
    await assert.rejects(indexDataset(root, { rebuild: true }), (err: unknown) => err instanceof DataError
      && err.code === 'VGG_ERR_DATASET' && err.message.endsWith('val.txt:1: expected a wnid or class index < 2, got "7"'));
  });

  test('the manifest is reused, and rebuilt when a class folder changes', async () => {
    const root = tempDir('idx-cache');
    await writeTree(root, ['n01'], 2, 0);
    let progress = 0;
    const first = await indexDataset(root, { onProgress: () => { progress += 1; } });
    assert.equal(progress, 1);
    await indexDataset(root, { onProgress: () => { progress += 1; } });
    assert.equal(progress, 1, 'second index came from the manifest');
    await writeImage(path.join(root, 'train', 'n01', 'new.JPEG'));
    const third = await indexDataset(root);
    assert.equal(third.train.length, first.train.length + 1);
  });

  test('a folder without train/ is a clear error', async () => {
    const root = tempDir('idx-empty');
    await assert.rejects(indexDataset(root), /expected an ImageNet-layout tree with train\/<class>\/ folders, got no .*train/);
  });
});
