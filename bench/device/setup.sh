# Sourced by the run scripts on the device machine: unpacks the node binary and node_modules that
# bundle.sh packed into tmp-probe/dev (Python's lzma: no xz needed there) and puts node on PATH.
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
t0=$(date +%s)
mkdir -p .n
python3 - <<'PY'
import lzma, tarfile, shutil, os
with lzma.open('tmp-probe/dev/node.xz') as s, open('.n/node', 'wb') as d: shutil.copyfileobj(s, d)
os.chmod('.n/node', 0o755)
tarfile.open('tmp-probe/dev/nm.tar.xz').extractall('.')
PY
export PATH=$PWD/.n:$PATH
echo "unpacked in $(( $(date +%s) - t0 )) s"
