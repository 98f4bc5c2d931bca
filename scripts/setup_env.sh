#!/usr/bin/env bash
# Installs what tf_simclr and its tests need: Debian's Fashion-MNIST files (the
# offline default dataset) when root and absent, and the pinned Python packages.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist
  else
    echo "note: Debian's dataset-fashion-mnist is not installed; fashion_mnist will need internet" >&2
  fi
fi
python3 -m pip install -q -e ".[test]"
