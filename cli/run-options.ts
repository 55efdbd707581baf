import type { Command } from 'commander';
import { RUN_OPTIONS, envName } from '../coordinator/run-config.ts';

/**
 * Adds every run option to a command as a plain string flag (no defaults:
 * defaults, environment and config file are merged by resolveRunConfig, and
 * flags win). Boolean options take no value.
 */
export function addRunOptions(cmd: Command): Command {
  for (const o of RUN_OPTIONS) {
    const boolean = o.key === 'batchNorm' || o.key === 'resume';
    const arg = boolean ? o.flag : `${o.flag} <value>`;
    cmd.option(arg, `${o.description} (env ${envName(o.flag)})`);
  }
  return cmd.option('--config-file <file>', 'JSON file with run options (camelCase keys); flags and env win');
}
