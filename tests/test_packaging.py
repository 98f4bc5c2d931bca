"""What installing tf_simclr puts into site-packages, and the checkout's shims.

The wheel holds one top-level package, tf_simclr, and two commands:
tf-simclr (tf_simclr.cli, the checkout's run.py) and tf-simclr-export
(tf_simclr.export.cli, the checkout's `python -m export`). run.py and export/
stay in the checkout as shims, never installed.
"""

import os
import runpy
import shutil
import subprocess
import sys
import zipfile

import pytest
import setuptools

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONSOLE_SCRIPTS = {'tf-simclr': 'tf_simclr.cli:console_main',
                   'tf-simclr-export': 'tf_simclr.export.cli:console_main'}


def _setup_arguments(monkeypatch):
  """The keyword arguments setup.py passes to setuptools.setup."""
  captured = {}
  monkeypatch.setattr(setuptools, 'setup', lambda **kwargs: captured.update(
      kwargs))
  monkeypatch.chdir(REPO_ROOT)
  runpy.run_path(os.path.join(REPO_ROOT, 'setup.py'), run_name='__main__')
  return captured


def _environment():
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
  env.pop('PYTHONPATH', None)
  return env


def test_setup_installs_only_tf_simclr(monkeypatch):
  arguments = _setup_arguments(monkeypatch)
  packages = arguments['packages']
  assert {name.split('.')[0] for name in packages} == {'tf_simclr'}
  assert not arguments.get('py_modules')
  # Every folder of Python files under tf_simclr is a package the wheel holds.
  for directory, _, names in os.walk(os.path.join(REPO_ROOT, 'tf_simclr')):
    if '__pycache__' in directory or not any(
        name.endswith('.py') for name in names):
      continue
    package = os.path.relpath(directory, REPO_ROOT).replace(os.sep, '.')
    assert package in packages, package
  scripts = dict(line.replace(' ', '').split('=')
                 for line in arguments['entry_points']['console_scripts'])
  assert scripts == {name: target.replace(' ', '')
                     for name, target in CONSOLE_SCRIPTS.items()}
  # Ranges in install_requires: no exact pin (constraints.txt has those).
  assert not [r for r in arguments['install_requires'] if '==' in r]


def test_constraints_pin_every_requirement(monkeypatch):
  arguments = _setup_arguments(monkeypatch)
  requirements = arguments['install_requires'] + [
      r for extra in arguments['extras_require'].values() for r in extra]
  with open(os.path.join(REPO_ROOT, 'constraints.txt')) as f:
    pins = dict(line.split('==') for line in f.read().splitlines()
                if line.strip() and not line.startswith('#'))

  def normal(name):
    return name.lower().replace('_', '-')
  pinned = {normal(name) for name in pins}
  for requirement in requirements:
    name = requirement.split(';')[0]
    for separator in '<>=!~':
      name = name.split(separator)[0]
    assert normal(name.strip()) in pinned, requirement


def test_checkout_shims_are_the_package():
  """`import run` and `import export` from the repository root give the
  package's objects; run's flags are defined once."""
  script = (
      'import sys\n'
      'import run, export\n'
      'from tf_simclr import cli\n'
      'import tf_simclr.export as package\n'
      'assert "tensorflow" not in sys.modules  # --help answers at once.\n'
      'assert run.run_in_process is cli.run_in_process\n'
      'assert run.main is cli.main and run.FLAGS is cli.FLAGS\n'
      'from export import exporter\n'
      'assert export.export_model is package.export_model\n'
      'assert exporter is package.exporter\n')
  completed = subprocess.run([sys.executable, '-c', script], cwd=REPO_ROOT,
                             env=_environment(), capture_output=True,
                             text=True, timeout=120)
  assert completed.returncode == 0, completed.stderr


def _help(command, cwd):
  completed = subprocess.run(command + ['--help'], cwd=cwd,
                             env=_environment(), capture_output=True,
                             text=True, timeout=300)
  # absl's --help exits 1 after printing; argparse's exits 0.
  assert completed.returncode in (0, 1), completed.stderr
  return completed.stdout


def test_checkout_commands_help():
  text = _help([sys.executable, 'run.py'], REPO_ROOT)
  assert text.startswith('SimCLRv2: pretrain, finetune or distill')
  assert '--train_mode' in text and '--model_dir' in text
  text = _help([sys.executable, '-m', 'export'], REPO_ROOT)
  assert text.startswith('usage: python -m export') and '--model_dir' in text


@pytest.mark.slow
def test_wheel_installs_tf_simclr_and_its_commands(tmp_path):
  """Builds the wheel from a copy of the checkout, lists it, installs it in a
  fresh venv (TensorFlow and the rest from this environment's site-packages)
  and runs both commands' --help outside the checkout."""
  source = tmp_path / 'source'
  source.mkdir()
  ignore = shutil.ignore_patterns('__pycache__', '*.pyc', '*.egg-info')
  for name in ('setup.py', 'run.py'):
    shutil.copy(os.path.join(REPO_ROOT, name), source / name)
  for name in ('tf_simclr', 'export'):
    shutil.copytree(os.path.join(REPO_ROOT, name), source / name,
                    ignore=ignore)
  dist = tmp_path / 'dist'
  subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps',
                  '--no-build-isolation', '--no-index', '-q', '-w', str(dist),
                  str(source)], check=True, env=_environment(), timeout=600)
  wheels = list(dist.glob('tf_simclr-*.whl'))
  assert len(wheels) == 1, wheels
  with zipfile.ZipFile(wheels[0]) as wheel:
    names = wheel.namelist()
    top_level = {name.split('/')[0] for name in names
                 if not name.split('/')[0].endswith(('.dist-info',
                                                     '.data'))}
    assert top_level == {'tf_simclr'}, sorted(top_level)
    assert 'tf_simclr/export/exporter.py' in names
    assert 'tf_simclr/cli.py' in names
    entry_points = next(wheel.read(name).decode() for name in names
                        if name.endswith('.dist-info/entry_points.txt'))
  for name, target in CONSOLE_SCRIPTS.items():
    assert f'{name} = {target}' in entry_points

  venv = tmp_path / 'venv'
  subprocess.run([sys.executable, '-m', 'venv', '--system-site-packages',
                  str(venv)], check=True, timeout=300)
  binaries = venv / 'bin'
  python = str(binaries / 'python')
  subprocess.run([python, '-m', 'pip', 'install', '-q', '--no-deps',
                  '--no-index', str(wheels[0])], check=True,
                 env=_environment(), timeout=600)
  elsewhere = tmp_path / 'elsewhere'
  elsewhere.mkdir()
  location = subprocess.run(
      [python, '-c', 'import tf_simclr; print(tf_simclr.__file__)'],
      cwd=elsewhere, env=_environment(), capture_output=True, text=True,
      check=True, timeout=120).stdout.strip()
  assert location.startswith(str(venv)), location
  text = _help([str(binaries / 'tf-simclr')], elsewhere)
  assert text.startswith('SimCLRv2: pretrain, finetune or distill')
  assert '--train_mode' in text and '--teacher_checkpoint' in text
  text = _help([str(binaries / 'tf-simclr-export')], elsewhere)
  assert text.startswith('usage: tf-simclr-export') and '--export_dir' in text
