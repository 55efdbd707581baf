"""GPU reference figures for bench:scaling (issue 5): one VGG-16 training step
(forward, backward, momentum SGD) at batch 64, 224x224, 1000 classes, in PyTorch,
in fp32 (TF32 off), TF32 and bf16 autocast; plus the time to sum a 138,357,544-float
gradient on the GPU. Prints one JSON line; writes it to $OUT/vgg16_step.json.

    /usr/bin/python3 bench/gpu/vgg16_step.py
"""
import torch

from vgg16_model import emit, ms_per_call, setup

def bench(mode, batch=64, warmup=8, iters=25):
    m, x, y, loss_fn = setup(mode, batch)
    params = sum(p.numel() for p in m.parameters())
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast('cuda', dtype=torch.bfloat16, enabled=mode == 'bf16'):
            loss = loss_fn(m(x), y)
        loss.backward()
        opt.step()
    ms = ms_per_call(step, warmup, iters)
    del m, opt
    torch.cuda.empty_cache()
    return {'mode': mode, 'batch': batch, 'stepMs': round(ms, 2), 'imagesPerSec': round(batch * 1000 / ms, 1), 'params': params}

def reduce_bench(n=138_357_544, workers=4, iters=20):
    acc = torch.zeros(n, device='cuda')
    g = torch.randn(n, device='cuda')
    ms = ms_per_call(lambda: acc.add_(g), 3, iters)
    return {'floats': n, 'addMsPerGradient': round(ms, 3), 'GBps': round(3 * 4 * n / ms / 1e6, 1)}

out = {'device': torch.cuda.get_device_name(0), 'torch': torch.__version__, 'cuda': torch.version.cuda,
       'steps': [bench('fp32'), bench('tf32'), bench('bf16')], 'reduce': reduce_bench()}
emit(out, 'vgg16_step.json')
