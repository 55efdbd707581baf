"""GPU reference figures for the overlap of communication with the backward pass
(issue 5): in one VGG-16 training step (batch 64, 224x224, PyTorch), when the
classifier's gradients (fc6-fc8, 89% of the bytes) are complete, measured from the
start of the backward pass with CUDA events recorded as each parameter's gradient is
accumulated; how long the conv body's backward runs after that (the window in which
the classifier's bytes could be on the wire); and the device-to-host copy time of the
whole 553 MB gradient (pinned and pageable host memory), which a worker pays before
its first byte leaves. Prints one JSON line; writes it to $OUT/vgg16_overlap.json.

    python3 bench/gpu/vgg16_overlap.py
"""
import torch
import torch.nn as nn

from vgg16_model import emit, ms_per_call, setup

def timeline(mode, batch=64, warmup=6, iters=15):
    m, x, y, loss_fn = setup(mode, batch)
    params = list(m.parameters())
    fc = {id(p) for layer in m if isinstance(layer, nn.Linear) for p in layer.parameters()}
    fc_bytes = sum(p.numel() * 4 for p in params if id(p) in fc)
    all_bytes = sum(p.numel() * 4 for p in params)
    events = {}
    for p in params:
        p.register_post_accumulate_grad_hook(lambda p: events.__setitem__(id(p), torch.cuda.Event(enable_timing=True)) or events[id(p)].record())
    rows = []
    for i in range(warmup + iters):
        for p in params:
            p.grad = None
        events.clear()
        start, fwd_end, end = (torch.cuda.Event(enable_timing=True) for _ in range(3))
        start.record()
        with torch.autocast('cuda', dtype=torch.bfloat16, enabled=mode == 'bf16'):
            loss = loss_fn(m(x), y)
        fwd_end.record()
        loss.backward()
        end.record()
        torch.cuda.synchronize()
        if i < warmup:
            continue
        fc_ready = max(fwd_end.elapsed_time(events[id(p)]) for p in params if id(p) in fc)
        all_ready = max(fwd_end.elapsed_time(events[id(p)]) for p in params)
        rows.append((start.elapsed_time(fwd_end), fc_ready, all_ready, start.elapsed_time(end)))
    med = lambda k: round(sorted(r[k] for r in rows)[len(rows) // 2], 2)
    del m
    torch.cuda.empty_cache()
    return {'mode': mode, 'batch': batch, 'forwardMs': med(0), 'classifierGradsReadyMs': med(1), 'allGradsReadyMs': med(2),
            'forwardBackwardMs': med(3), 'classifierBytes': fc_bytes, 'allBytes': all_bytes,
            'bodyBackwardAfterClassifierMs': round(med(2) - med(1), 2)}

def d2h(n=138_357_544, iters=10):
    g = torch.randn(n, device='cuda')
    out = {}
    for name, host in (('pinned', torch.empty(n, pin_memory=True)), ('pageable', torch.empty(n))):
        ms = ms_per_call(lambda: host.copy_(g), 2, iters)
        out[name] = {'ms': round(ms, 2), 'GBps': round(4 * n / ms / 1e6, 1)}
    return out

out = {'device': torch.cuda.get_device_name(0), 'torch': torch.__version__,
       'timeline': [timeline('fp32'), timeline('tf32'), timeline('bf16')], 'deviceToHost553MB': d2h()}
emit(out, 'vgg16_overlap.json')
