"""bench:allreduce peer: torch.distributed.all_reduce (gloo) of one fp32 tensor
of --floats elements across --world processes over loopback. Rank 0 prints one
JSON line with the time of each timed all_reduce (after a barrier); every rank prints
its CPU time (all threads, time.process_time) and minor page faults over the timed
loop, barriers included."""
import argparse, json, resource, time
import torch
import torch.distributed as dist

p = argparse.ArgumentParser()
p.add_argument('--rank', type=int); p.add_argument('--world', type=int); p.add_argument('--port', type=int)
p.add_argument('--floats', type=int); p.add_argument('--steps', type=int)
a = p.parse_args()
torch.set_num_threads(1)
dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{a.port}', rank=a.rank, world_size=a.world)
t = torch.full((a.floats,), 1e-3, dtype=torch.float32)
dist.all_reduce(t)  # warm-up
times = []
cpu0 = time.process_time()
faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(a.steps):
    dist.barrier()
    t0 = time.perf_counter()
    dist.all_reduce(t)
    times.append((time.perf_counter() - t0) * 1000)
cpu_ms = (time.process_time() - cpu0) * 1000
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0
if a.rank == 0:
    print(json.dumps({'torch': torch.__version__, 'world': a.world, 'ms': times, 'cpuMs': cpu_ms, 'minorFaults': faults}), flush=True)
else:
    print(json.dumps({'rank': a.rank, 'cpuMs': cpu_ms, 'minorFaults': faults}), flush=True)
dist.destroy_process_group()
