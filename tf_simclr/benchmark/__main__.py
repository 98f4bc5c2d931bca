"""python -m tf_simclr.benchmark: the command line of tf_simclr/benchmark/cli.py."""

from absl import flags

from tf_simclr import benchmark
from tf_simclr.benchmark import cli

__doc__ = benchmark.__doc__  # What --help prints above the flags.
# --help lists the benchmark's flags (they are defined in cli).
flags.adopt_module_key_flags(cli)

if __name__ == '__main__':
  cli.run()
