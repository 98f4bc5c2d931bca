"""python -m tf_simclr.export: the command line of tf_simclr/export/cli.py."""

import sys

from tf_simclr.export import cli

if __name__ == '__main__':
  sys.exit(cli.main(program='python -m tf_simclr.export'))
