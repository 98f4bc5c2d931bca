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
# Exact versions from constraints.txt; setup.py holds the supported ranges.
python3 -m pip install -q -c constraints.txt -e ".[test]"
# Fashion-MNIST's IDX files written once into TFDS's format (about 30 s), so
# that the first run.py starts training at once.
if [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  TF_CPP_MIN_LOG_LEVEL=3 python3 -c "from tf_simclr import data; data.get_info('fashion_mnist')" \
    2>/dev/null || echo 'note: fashion_mnist not prepared now; run.py will try again' >&2
fi
