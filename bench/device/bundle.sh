#!/bin/bash
# Packs what our benchmarks need on the device machine (which has no Node and no npm registry):
# this machine's node binary and node_modules (without TypeScript, types and source maps), xz-compressed
# into tmp-probe/dev (git-ignored; ~43 MiB, under the device tool's 64 MiB carry limit).
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p tmp-probe/dev
xz -T2 -9 -c "$(command -v node)" > tmp-probe/dev/node.xz
tar -cf - --exclude='node_modules/typescript' --exclude='node_modules/@types' --exclude='*.map' --exclude='*.d.ts' node_modules | xz -T2 -6 > tmp-probe/dev/nm.tar.xz
du -sh tmp-probe/dev
