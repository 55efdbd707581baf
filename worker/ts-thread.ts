import { Worker } from 'node:worker_threads';

/**
 * A worker_thread running the TypeScript module at `moduleUrl` with `workerData`: tsx's loader is registered per
 * thread, so the thread's bootstrap registers it, then loads the module.
 */
export function tsThread(moduleUrl: string, workerData: unknown): Worker {
  const tsx = import.meta.resolve('tsx/esm/api');
  const bootstrap = `import(${JSON.stringify(tsx)}).then((t) => { t.register(); return import(${JSON.stringify(moduleUrl)}); })`;
  return new Worker(bootstrap, { eval: true, workerData });
}
