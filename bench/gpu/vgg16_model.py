"""VGG-16 (configuration D) in PyTorch, as the GPU reference scripts build it, and
what those scripts share: the per-mode setup, a timing loop, writing the result."""
import json, os, time
import torch
import torch.nn as nn

CFG_D = [64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M', 512, 512, 512, 'M']

def vgg16():
    layers, c = [], 3
    for v in CFG_D:
        if v == 'M':
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=True)]
            c = v
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(),
                         nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(), nn.Linear(4096, 1000))

def setup(mode, batch):
    """VGG-16 on the GPU for `mode` (fp32 with TF32 off, tf32, bf16), a random batch, the loss."""
    torch.backends.cuda.matmul.allow_tf32 = mode != 'fp32'
    torch.backends.cudnn.allow_tf32 = mode != 'fp32'
    torch.backends.cudnn.benchmark = True
    m = vgg16().cuda()
    x = torch.randn(batch, 3, 224, 224, device='cuda')
    y = torch.randint(0, 1000, (batch,), device='cuda')
    return m, x, y, nn.CrossEntropyLoss()

def ms_per_call(fn, warmup, iters):
    """Mean wall milliseconds of fn() over `iters` calls after `warmup`, the GPU synchronized around them."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) * 1000 / iters

def emit(out, name):
    """Prints `out` as one JSON line and writes it to $OUT/`name` when OUT is set."""
    line = json.dumps(out)
    print(line)
    if os.environ.get('OUT'):
        with open(os.path.join(os.environ['OUT'], name), 'w') as f:
            f.write(line + '\n')
