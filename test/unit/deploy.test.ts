import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import type { Command } from 'commander';
import { parseAllDocuments, parse } from 'yaml';
import { buildProgram } from '../../cli/program.ts';
import { RUN_OPTIONS, envName } from '../../coordinator/run-config.ts';
import { parseShard } from '../../shared/shard.ts';

const DEPLOY = path.resolve('deploy');
type Obj = Record<string, unknown>;
const compose = parse(readFileSync(path.join(DEPLOY, 'compose.yaml'), 'utf8'), { merge: true }) as Obj;
const k8s = readdirSync(path.join(DEPLOY, 'k8s')).filter((f) => f.endsWith('.yaml')).sort()
  .flatMap((f) => parseAllDocuments(readFileSync(path.join(DEPLOY, 'k8s', f), 'utf8')).map((d) => {
    assert.deepEqual(d.errors, [], `${f} parses`);
    return d.toJS() as Obj;
  }));
const dockerfiles = Object.fromEntries(readdirSync(DEPLOY).filter((f) => f.endsWith('.Dockerfile')).map((f) => [f, readFileSync(path.join(DEPLOY, f), 'utf8')]));

/** Every VGG_* variable the code reads: the run options' and each `env.VGG_*` / `env['VGG_*']` in the sources. */
function variablesTheCodeReads(): Set<string> {
  const names = new Set(RUN_OPTIONS.map((o) => envName(o.flag)));
  const walk = (dir: string): string[] => readdirSync(dir, { withFileTypes: true })
    .flatMap((e) => (e.isDirectory() ? walk(path.join(dir, e.name)) : e.name.endsWith('.ts') ? [path.join(dir, e.name)] : []));
  for (const file of ['cli', 'coordinator', 'shared', 'worker'].flatMap((d) => walk(path.resolve(d)))) {
    for (const m of readFileSync(file, 'utf8').matchAll(/env(?:\.|\[')(VGG_[A-Z0-9_]+)/g)) names.add(m[1] as string);
  }
  return names;
}

/** The subcommand an argv names (`coordinator start`), and its flags. */
function commandOf(program: Command, argv: string[]): { cmd: Command; flags: string[] } {
  let cmd = program;
  let i = 0;
  for (; i < argv.length && !(argv[i] ?? '').startsWith('-'); i += 1) {
    const next = cmd.commands.find((c) => c.name() === argv[i]);
    assert.ok(next !== undefined, `command ${argv.slice(0, i + 1).join(' ')} exists in the CLI`);
    cmd = next;
  }
  return { cmd, flags: argv.slice(i).filter((a) => a.startsWith('--')) };
}

function checkArgv(argv: string[], where: string): void {
  const { cmd, flags } = commandOf(buildProgram(), argv);
  const known = new Set(cmd.options.map((o) => o.long));
  for (const f of flags) assert.ok(known.has(f), `${where}: ${argv.join(' ')}: ${f} is an option of "${cmd.name()}"`);
}

const services = compose.services as Record<string, Obj>;
const composeEnv = (s: Obj) => s.environment as Record<string, string>;
const k8sKind = (kind: string) => k8s.filter((d) => d.kind === kind);
const byName = (kind: string, name: string) => k8sKind(kind).find((d) => (d.metadata as Obj).name === name) as Obj;
type Container = { name: string; image: string; args?: string[]; env?: Obj[]; envFrom?: Obj[]; ports?: { containerPort: number }[];
  volumeMounts?: { name: string; mountPath: string }[]; readinessProbe?: Obj; livenessProbe?: Obj; resources?: Obj };
const podSpec = (d: Obj) => ((d.spec as Obj).template as Obj).spec as Obj & { containers: Container[]; volumes?: Obj[] };
const container = (kind: string, name: string) => podSpec(byName(kind, name)).containers[0] as Container;
const configMap = (byName('ConfigMap', 'vgg-train-run').data ?? {}) as Record<string, string>;
/** A container's environment: its ConfigMap refs resolved, secret refs as `secret:name/key`. */
function k8sEnv(c: Container): Record<string, string> {
  const out: Record<string, string> = {};
  for (const ref of c.envFrom ?? []) {
    const name = ((ref.configMapRef as Obj).name) as string;
    Object.assign(out, (byName('ConfigMap', name).data ?? {}) as Record<string, string>);
  }
  for (const e of c.env ?? []) {
    const from = (e.valueFrom as Obj | undefined)?.secretKeyRef as { name: string; key: string } | undefined;
    out[e.name as string] = from !== undefined ? `secret:${from.name}/${from.key}` : String(e.value);
  }
  return out;
}
const portOf = (url: string) => Number(new URL(url).port);

describe('deploy/ agrees with the code', () => {
  const reads = variablesTheCodeReads();

  test('every command in compose, Kubernetes and the Dockerfiles is a CLI command with options it has', () => {
    for (const [name, s] of Object.entries(services)) if (Array.isArray(s.command) && name !== 'redis') checkArgv(s.command as string[], `compose ${name}`);
    for (const d of [...k8sKind('Deployment'), ...k8sKind('StatefulSet')]) {
      for (const c of podSpec(d).containers) if (c.image.startsWith('vgg-train')) checkArgv(c.args ?? [], `k8s ${(d.metadata as Obj).name}`);
    }
    for (const [file, text] of Object.entries(dockerfiles)) {
      assert.match(text, /^ENTRYPOINT \["node", "\/app\/bin\/vgg-train\.js"\]$/m, file);
      checkArgv(JSON.parse(/^CMD (\[.*\])$/m.exec(text)?.[1] ?? '[]') as string[], file);
    }
    assert.match(dockerfiles['worker.Dockerfile'] ?? '', /^FROM nvidia\/cuda:11\.2\.\d+-cudnn8-runtime-ubuntu20\.04$/m);
    assert.match(dockerfiles['worker.Dockerfile'] ?? '', /@tensorflow\/tfjs-node-gpu@4\.22\.0/);
    // The worker image builds the native JPEG crop decoder, after the files it needs are in.
    const worker = dockerfiles['worker.Dockerfile'] ?? '';
    const build = worker.indexOf('node scripts/build-native.mjs --required');
    assert.ok(build > worker.indexOf('COPY worker ./worker') && worker.indexOf('COPY worker ./worker') > 0, 'worker.Dockerfile builds build/jpeg_crop.node after copying worker/');
    assert.match(worker, /libjpeg-turbo8-dev/);
    // npm ci runs the package's prepare script, which must be in the image by then.
    for (const [file, text] of Object.entries(dockerfiles)) {
      const copy = text.indexOf('COPY scripts ./scripts');
      assert.ok(copy > 0 && copy < text.indexOf('RUN npm ci'), `${file} copies scripts/ before npm ci`);
    }
  });

  test('every VGG_* variable they set is one the code reads', () => {
    const set = [
      ...Object.entries(services).flatMap(([, s]) => Object.keys(composeEnv(s) ?? {})),
      ...Object.keys(configMap),
      ...[...k8sKind('Deployment'), ...k8sKind('StatefulSet')].flatMap((d) => podSpec(d).containers.flatMap((c) => (c.env ?? []).map((e) => e.name as string))),
      ...Object.values(dockerfiles).flatMap((t) => [...t.matchAll(/\b(VGG_[A-Z0-9_]+)=/g)].map((m) => m[1] as string)),
    ].filter((n) => n.startsWith('VGG_'));
    assert.ok(set.length > 20);
    for (const n of set) assert.ok(reads.has(n), `${n} is read by the code`);
  });

  test('ports: aggregator, Services, worker URLs, metrics and probes match', () => {
    const cEnv = composeEnv(services.coordinator as Obj);
    for (const w of ['worker-0', 'worker-1', 'worker-2', 'worker-3']) {
      const env = composeEnv(services[w] as Obj);
      assert.equal(portOf(env.VGG_COORDINATOR as string), Number(cEnv.VGG_PORT), w);
      assert.equal(new URL(env.VGG_COORDINATOR as string).hostname, 'coordinator');
    }
    assert.ok(((services.coordinator as Obj).ports as string[]).includes(`${cEnv.VGG_PORT}:${cEnv.VGG_PORT}`));
    // The follower shard reaches the coordinator's aggregator and advertises the port it publishes.
    const follower = services['aggregator-1'] as Obj;
    const fEnv = composeEnv(follower);
    assert.equal(portOf(fEnv.VGG_LEADER as string), Number(cEnv.VGG_PORT));
    assert.equal(new URL(fEnv.VGG_LEADER as string).hostname, 'coordinator');
    assert.equal(portOf(fEnv.VGG_ADVERTISE as string), Number(fEnv.VGG_PORT));
    assert.equal(new URL(fEnv.VGG_ADVERTISE as string).hostname, 'aggregator-1');
    assert.ok((follower.ports as string[]).includes(`${fEnv.VGG_PORT}:${fEnv.VGG_PORT}`));
    assert.ok(((follower.secrets as string[]) ?? []).includes('vgg_token') && fEnv.VGG_TOKEN === undefined);
    const shardArg = (follower.command as string[])[(follower.command as string[]).indexOf('--shard') + 1] as string;
    assert.equal(cEnv.VGG_SHARDS, '${VGG_SHARDS:-1}', 'the coordinator runs 1 shard unless VGG_SHARDS says 2 (with the sharded profile)');
    assert.equal(parseShard('--shard', shardArg).index, 1);

    const coord = container('Deployment', 'vgg-coordinator');
    const env = k8sEnv(coord);
    const svc = byName('Service', 'vgg-coordinator').spec as { ports: { port: number; targetPort: number; name: string }[]; selector: Obj };
    const agg = svc.ports.find((p) => p.name === 'aggregator');
    assert.equal(agg?.targetPort, Number(env.VGG_PORT));
    assert.ok(coord.ports?.some((p) => p.containerPort === Number(env.VGG_PORT)));
    assert.ok(coord.ports?.some((p) => p.containerPort === Number(env.VGG_METRICS_PORT)));
    for (const probe of [coord.readinessProbe, coord.livenessProbe]) assert.equal(((probe as Obj).httpGet as Obj).port, Number(env.VGG_METRICS_PORT));
    assert.deepEqual(svc.selector, ((((byName('Deployment', 'vgg-coordinator').spec as Obj).template as Obj).metadata as Obj).labels));

    const worker = container('StatefulSet', 'vgg-worker');
    const wEnv = k8sEnv(worker);
    const url = new URL(wEnv.VGG_COORDINATOR as string);
    assert.equal(url.hostname, 'vgg-coordinator');
    assert.equal(Number(url.port), agg?.port);
    for (const probe of [worker.readinessProbe, worker.livenessProbe]) assert.equal(((probe as Obj).httpGet as Obj).port, Number(wEnv.VGG_METRICS_PORT));
    assert.equal((worker.resources?.limits as Obj)['nvidia.com/gpu'], 1);
    assert.equal(portOf(configMap.VGG_REDIS as string), ((byName('Service', 'vgg-redis').spec as { ports: { port: number }[] }).ports[0] as { port: number }).port);

    // Every follower shard i/K of the k8s manifests: K is the coordinator's VGG_SHARDS, i runs 1..K-1 once
    // each; it reaches the coordinator's Service and advertises its own Service's name and port.
    const followers = k8sKind('Deployment').filter((d) => (d.metadata as Obj).name !== 'vgg-coordinator');
    assert.equal(followers.length, Number(env.VGG_SHARDS) - 1, 'one follower Deployment per shard beyond the coordinator');
    const indices = followers.map((d) => {
      const name = (d.metadata as Obj).name as string;
      const c = podSpec(d).containers[0] as Container;
      const fEnv = k8sEnv(c);
      assert.deepEqual(c.args, ['aggregator', 'start'], name);
      const shard = parseShard('VGG_SHARD', fEnv.VGG_SHARD as string);
      assert.equal(shard.count, Number(env.VGG_SHARDS), `${name}: K`);
      const leader = new URL(fEnv.VGG_LEADER as string);
      assert.equal(leader.hostname, 'vgg-coordinator');
      assert.equal(Number(leader.port), agg?.port);
      const advertise = new URL(fEnv.VGG_ADVERTISE as string);
      const fSvc = byName('Service', advertise.hostname).spec as { ports: { port: number; targetPort: number }[]; selector: Obj };
      assert.equal(fSvc.ports[0]?.port, Number(advertise.port), `${name}: advertised port is its Service's`);
      assert.equal(fSvc.ports[0]?.targetPort, Number(fEnv.VGG_PORT));
      assert.ok(c.ports?.some((p) => p.containerPort === Number(fEnv.VGG_PORT)));
      assert.deepEqual(fSvc.selector, ((((d.spec as Obj).template as Obj).metadata as Obj).labels));
      assert.equal(fEnv.VGG_TOKEN, 'secret:vgg-train-token/token', `${name}: token from the Secret`);
      return shard.index;
    });
    assert.deepEqual(indices.sort(), Array.from({ length: Number(env.VGG_SHARDS) - 1 }, (_, i) => i + 1));
  });

  test('secrets resolve, the token is never a literal in a pod, data and checkpoint paths are mounted', () => {
    const secretNames = Object.keys(compose.secrets as Obj);
    for (const name of ['coordinator', 'worker-0']) {
      const s = services[name] as Obj;
      const file = composeEnv(s).VGG_TOKEN_FILE as string;
      assert.ok((s.secrets as string[]).some((sec) => secretNames.includes(sec) && file === `/run/secrets/${sec}`), `${name} token file`);
      assert.equal(composeEnv(s).VGG_TOKEN, undefined);
    }
    for (const c of [container('Deployment', 'vgg-coordinator'), container('StatefulSet', 'vgg-worker')]) {
      const token = k8sEnv(c).VGG_TOKEN as string;
      const [, ref] = token.split(':');
      const [secret, key] = (ref ?? '').split('/');
      assert.ok(Object.keys((byName('Secret', secret as string).stringData ?? {}) as Obj).includes(key as string), `${c.name}: secret ${ref}`);
    }
    assert.equal(configMap.VGG_TOKEN, undefined);

    const mounted = (c: Container) => new Set((c.volumeMounts ?? []).map((m) => m.mountPath));
    const coord = container('Deployment', 'vgg-coordinator');
    const env = k8sEnv(coord);
    for (const p of [env.VGG_DATA, env.VGG_CHECKPOINT_DIR]) assert.ok(mounted(coord).has(p as string), `k8s coordinator mounts ${p}`);
    assert.ok(mounted(container('StatefulSet', 'vgg-worker')).has(env.VGG_DATA as string), 'k8s workers mount the data at the coordinator\'s path');
    const claims = new Set(k8sKind('PersistentVolumeClaim').map((d) => (d.metadata as Obj).name));
    for (const d of [byName('Deployment', 'vgg-coordinator'), byName('StatefulSet', 'vgg-worker')]) {
      for (const v of podSpec(d).volumes ?? []) assert.ok(claims.has(((v.persistentVolumeClaim as Obj).claimName) as string), `claim of ${v.name}`);
    }
    const composeMounts = (s: Obj) => new Set((s.volumes as string[]).map((v) => v.split(':')[1]));
    const cEnv = composeEnv(services.coordinator as Obj);
    for (const p of [cEnv.VGG_DATA, cEnv.VGG_CHECKPOINT_DIR]) assert.ok(composeMounts(services.coordinator as Obj).has(p), `compose coordinator mounts ${p}`);
    assert.ok(composeMounts(services['worker-1'] as Obj).has(cEnv.VGG_DATA), 'compose workers mount the data');
  });

  test('images and Redis: names agree across compose, Kubernetes and Dockerfiles; Redis has AOF and noeviction; one GPU per worker', () => {
    for (const [svc, kind, name, file] of [['coordinator', 'Deployment', 'vgg-coordinator', 'coordinator.Dockerfile'], ['worker-2', 'StatefulSet', 'vgg-worker', 'worker.Dockerfile']] as const) {
      const s = services[svc] as Obj;
      assert.equal(s.image, container(kind, name).image);
      assert.equal((s.build as Obj).dockerfile, `deploy/${file}`);
      assert.match(dockerfiles[file] ?? '', new RegExp(`-t ${String(s.image).replace(/\./g, '\\.')} `));
    }
    for (const args of [(services.redis as Obj).command as string[], container('StatefulSet', 'vgg-redis').args ?? []]) {
      const a = args.join(' ');
      assert.match(a, /--appendonly yes/);
      assert.match(a, /--maxmemory-policy noeviction/);
    }
    const gpus = ['worker-0', 'worker-1', 'worker-2', 'worker-3'].map((w) => {
      const devices = ((((services[w] as Obj).deploy as Obj).resources as Obj).reservations as Obj).devices as { driver: string; device_ids: string[]; capabilities: string[] }[];
      assert.equal(devices[0]?.driver, 'nvidia');
      assert.deepEqual(devices[0]?.capabilities, ['gpu']);
      return devices[0]?.device_ids.join(',');
    });
    assert.deepEqual(gpus, ['0', '1', '2', '3']);
    assert.ok(Number((podSpec(byName('Deployment', 'vgg-coordinator')).terminationGracePeriodSeconds)) >= 300, 'time for a checkpoint');
  });
});
