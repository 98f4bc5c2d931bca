"""Shared pytest setup: quiet TF logs, repo root importable, the `slow` marker."""

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# The kernels run.py trains with (run.py turns oneDNN on before TensorFlow
# loads), in this process and in every subprocess a test starts.
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '1')
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
  sys.path.insert(0, REPO_ROOT)


def pytest_configure(config):
  config.addinivalue_line(
      'markers', 'slow: long test, left out by default; run with -m slow')
