# GPU worker: CUDA 11.2 + cuDNN 8.1 (what libtensorflow 2.9.1 inside
# @tensorflow/tfjs-node-gpu 4.x is built against) and Node 20.
#   docker build -f deploy/worker.Dockerfile -t vgg-train-worker:0.1.0 .
# Where storage.googleapis.com is blocked, point the libtensorflow download at a mirror:
#   --build-arg TFJS_NODE_CDN_STORAGE=https://mirror.example/   (see deploy/README.md)
FROM nvidia/cuda:11.2.2-cudnn8-runtime-ubuntu20.04

ARG NODE_MAJOR=20
ARG TFJS_NODE_CDN_STORAGE=
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl gnupg \
 && curl -fsSL https://deb.nodesource.com/setup_${NODE_MAJOR}.x | bash - \
 && apt-get install -y --no-install-recommends nodejs \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY package.json package-lock.json ./
# npm ci runs the package's prepare (scripts/build-native.mjs): it must be here; it builds nothing yet.
COPY scripts ./scripts
# The optional tfjs-node (CPU) is skipped; tfjs-node-gpu downloads libtensorflow (GPU) in its install script.
RUN npm ci --omit=dev --omit=optional --no-audit --no-fund \
 && TFJS_NODE_CDN_STORAGE="${TFJS_NODE_CDN_STORAGE}" npm install --no-save --no-audit --no-fund --foreground-scripts @tensorflow/tfjs-node-gpu@4.22.0
COPY bin ./bin
COPY cli ./cli
COPY coordinator ./coordinator
COPY shared ./shared
COPY worker ./worker
COPY tsconfig.json ./
# The native addons: the data pipeline's JPEG crop decoder (build/jpeg_crop.node; libjpeg-turbo stays for it at
# run time) and the heap setting that keeps glibc from unmapping each step's host copies (build/host_memory.node).
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev libjpeg-turbo8-dev \
 && node scripts/build-native.mjs --required \
 && apt-get purge -y gcc libc6-dev && apt-get autoremove -y \
 && rm -rf /var/lib/apt/lists/*

ENV VGG_BACKEND=tensorflow \
    VGG_METRICS_HOST=0.0.0.0 \
    VGG_METRICS_PORT=9401
EXPOSE 9401
ENTRYPOINT ["node", "/app/bin/vgg-train.js"]
CMD ["worker", "start", "--gpu", "0"]
