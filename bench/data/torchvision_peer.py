"""bench:data peer: the same training augmentation with torchvision + PIL, one
image at a time on one thread: decode, isotropic rescale of the shorter side to
S in [256, 512], random 224 crop, horizontal flip, to tensor, AlexNet PCA
colour shift, mean subtraction. Prints one JSON line (images/s per core).

    /usr/bin/python3 bench/data/torchvision_peer.py --images 400 FILE...
"""
import argparse, json, random, time
import torch
import torchvision
import torchvision.transforms as T
from PIL import Image

p = argparse.ArgumentParser()
p.add_argument('--images', type=int, default=400)
p.add_argument('files', nargs='+')
a = p.parse_args()
torch.set_num_threads(1)
random.seed(1)
torch.manual_seed(1)

EIGVAL = torch.tensor([0.2175, 0.0188, 0.0045])
EIGVEC = torch.tensor([[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]])
MEAN = torch.tensor([123.68, 116.779, 103.939]).view(3, 1, 1) / 255.0

def lighting(x):
    alpha = torch.randn(3) * 0.1
    return x + (EIGVEC @ (alpha * EIGVAL)).view(3, 1, 1)

crop_flip = T.Compose([T.RandomCrop(224), T.RandomHorizontalFlip(), T.ToTensor()])

def augment(path):
    img = Image.open(path).convert('RGB')
    img = T.Resize(random.randint(256, 512))(img)  # shorter side to S, aspect kept
    return lighting(crop_flip(img)) - MEAN

for i in range(20):
    augment(a.files[i % len(a.files)])
t = time.perf_counter()
for i in range(a.images):
    augment(a.files[i % len(a.files)])
s = time.perf_counter() - t
print(json.dumps({'peer': 'torchvision', 'torch': torch.__version__, 'torchvision': torchvision.__version__, 'images': a.images,
                  'imagesPerSecondPerCore': a.images / s}))
