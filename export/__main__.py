"""python -m export: tf_simclr/export/cli.py's command line, from a checkout."""

import sys

from tf_simclr.export import cli

if __name__ == '__main__':
  sys.exit(cli.main(program='python -m export'))
