# Coordinator (dataset index, queues, embedded aggregator, checkpoints): CPU only.
#   docker build -f deploy/coordinator.Dockerfile -t vgg-train-coordinator:0.1.0 .
FROM node:20-bookworm-slim

WORKDIR /app
COPY package.json package-lock.json ./
# npm ci runs the package's prepare (scripts/build-native.mjs): it must be here; it builds nothing yet.
COPY scripts ./scripts
RUN npm ci --omit=dev --omit=optional --no-audit --no-fund
COPY bin ./bin
COPY cli ./cli
COPY coordinator ./coordinator
COPY shared ./shared
COPY worker ./worker
COPY tsconfig.json ./

ENV VGG_HOST=0.0.0.0 \
    VGG_PORT=7070 \
    VGG_METRICS_HOST=0.0.0.0 \
    VGG_METRICS_PORT=9400
EXPOSE 7070 9400
ENTRYPOINT ["node", "/app/bin/vgg-train.js"]
CMD ["coordinator", "start", "--resume"]
