# The checkout's command line, `python run.py --flags...`: the same program as
# the installed `tf-simclr`, whose code (flags, main, run_in_process) is
# tf_simclr/cli.py. Not installed with the package; `import run` from the
# repository root gets tf_simclr.cli's names (scripts/ and benchmarks/ do).
# pylint: disable=unused-import

from tf_simclr import cli
from tf_simclr.cli import FLAGS
from tf_simclr.cli import config_from_flags
from tf_simclr.cli import main
from tf_simclr.cli import parse_flags
from tf_simclr.cli import run
from tf_simclr.cli import run_in_process
from tf_simclr.cli import user_errors

__doc__ = cli.__doc__  # What --help prints above the flags.

if __name__ == '__main__':
  cli.console_main()
