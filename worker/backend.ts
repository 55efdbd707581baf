import * as tf from '@tensorflow/tfjs';
import { BackendError, ConfigError } from '../shared/errors.ts';
import type { Logger } from '../shared/logger.ts';
import { installTrainingKernels, uninstallTrainingKernels } from './kernels/training-kernels.ts';

export const BACKEND_CHOICES = ['auto', 'tensorflow', 'wasm', 'cpu'] as const;
export type BackendChoice = (typeof BACKEND_CHOICES)[number];
export type BackendName = 'tensorflow' | 'wasm' | 'cpu';

export interface BackendOptions {
  /** `auto` tries tensorflow (tfjs-node-gpu, then tfjs-node), wasm, cpu. @defaultValue env VGG_BACKEND or 'auto' */
  backend?: BackendChoice;
  /** Sets CUDA_VISIBLE_DEVICES before TensorFlow.js loads its native binding. */
  gpu?: number;
  /** Keep the stock wasm/cpu kernels (benchmarks compare against them). @defaultValue false */
  stockKernels?: boolean;
  log?: Logger;
}

export interface BackendChoiceResult {
  name: BackendName;
  /** What the native package was, when name is 'tensorflow'. */
  detail: string;
  /** Why each backend tried before the chosen one was not taken. */
  rejected: Record<string, string>;
}

let selected: BackendChoiceResult | undefined;

/** Parses a backend name from a flag or VGG_BACKEND. */
export function parseBackend(value: string | undefined, option = '--backend'): BackendChoice {
  const v = value ?? 'auto';
  if (!(BACKEND_CHOICES as readonly string[]).includes(v)) {
    throw new ConfigError(`${option}: expected one of ${BACKEND_CHOICES.join(', ')}, got ${JSON.stringify(v)}`);
  }
  return v as BackendChoice;
}

async function tryTensorflow(rejected: Record<string, string>): Promise<string | undefined> {
  for (const pkg of ['@tensorflow/tfjs-node-gpu', '@tensorflow/tfjs-node']) {
    try {
      await import(pkg);
      if (await tf.setBackend('tensorflow')) return pkg;
      rejected[pkg] = 'loaded but the tensorflow backend did not initialise';
    } catch (err) {
      rejected[pkg] = (err as Error).message.split('\n')[0] ?? String(err);
    }
  }
  return undefined;
}

async function tryWasm(rejected: Record<string, string>): Promise<boolean> {
  try {
    await import('@tensorflow/tfjs-backend-wasm');
    if (await tf.setBackend('wasm')) return true;
    rejected.wasm = 'the wasm backend did not initialise';
  } catch (err) {
    rejected.wasm = (err as Error).message;
  }
  return false;
}

/**
 * Picks the compute backend once per process and logs the choice and why the
 * others were not taken. Later calls return the first choice.
 */
export async function selectBackend(options: BackendOptions = {}): Promise<BackendChoiceResult> {
  if (selected !== undefined) return selected;
  const choice = options.backend ?? parseBackend(process.env.VGG_BACKEND, 'VGG_BACKEND');
  if (options.gpu !== undefined) process.env.CUDA_VISIBLE_DEVICES = String(options.gpu);
  tf.enableProdMode();
  const rejected: Record<string, string> = {};
  let result: BackendChoiceResult | undefined;

  if (choice === 'auto' || choice === 'tensorflow') {
    const pkg = await tryTensorflow(rejected);
    if (pkg !== undefined) result = { name: 'tensorflow', detail: pkg, rejected };
    else if (choice === 'tensorflow') {
      throw new BackendError(`--backend tensorflow: expected @tensorflow/tfjs-node-gpu or @tensorflow/tfjs-node to load, got: ${JSON.stringify(rejected)}`);
    }
  }
  if (result === undefined && (choice === 'auto' || choice === 'wasm')) {
    if (await tryWasm(rejected)) {
      if (!options.stockKernels) installTrainingKernels('wasm');
      result = { name: 'wasm', detail: options.stockKernels ? 'stock kernels' : 'XNNPACK + vgg-train training kernels', rejected };
    } else if (choice === 'wasm') {
      throw new BackendError(`--backend wasm: expected @tensorflow/tfjs-backend-wasm to initialise, got: ${rejected.wasm}`);
    }
  }
  if (result === undefined) {
    await tf.setBackend('cpu');
    if (!options.stockKernels) installTrainingKernels('cpu');
    result = { name: 'cpu', detail: options.stockKernels ? 'stock kernels' : 'vgg-train training kernels', rejected };
  }
  options.log?.info({ backend: result.name, detail: result.detail, rejected: result.rejected }, 'compute backend selected');
  selected = result;
  return result;
}

/**
 * Switches backend inside one process, for benchmarks and kernel tests that
 * compare backends. Production code calls selectBackend once.
 */
export async function switchBackend(name: 'wasm' | 'cpu', stockKernels = false): Promise<void> {
  tf.enableProdMode();
  if (name === 'wasm') await import('@tensorflow/tfjs-backend-wasm');
  if (!(await tf.setBackend(name))) throw new BackendError(`backend ${name}: expected it to initialise, it did not`);
  if (stockKernels) uninstallTrainingKernels(name);
  else installTrainingKernels(name);
}
