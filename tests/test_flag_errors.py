"""Every bad flag value ends in one line and exit status 2: tables over all
flags of run.py, `python -m export` and `python -m tf_simclr.benchmark`.

For each flag, the values of its kind that must be refused (negative, zero,
NaN, inf, out of range, a wrong type or enum value, a path that does not
exist, a file where a directory is wanted, an empty directory) and the
combinations with other flags that must be refused; a flag with nothing to
refuse says why. Each case: exit status 2, one line on stderr naming the
flag, no traceback. The tables are checked against the flags the commands
define: a flag added without an entry fails here.

run.py's cheap cases go in-process through run.py's own run() stopped where
TensorFlow would load (tf_simclr.cli.check_flags); those that need
TensorFlow (the strategy, the dataset) run in one subprocess,
tests/flag_error_run.py, which also shows that refused runs leave a
model_dir holding a checkpoint and an export byte for byte as it was. The
benchmark's flags share absl's FLAGS with run.py's names, so its table runs
in a subprocess of its own (no TensorFlow there either).
"""

import collections
import json
import os
import subprocess
import sys
import time

import pytest

from tf_simclr import cli
from tf_simclr.export import cli as export_cli

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = cli.FLAGS

Case = collections.namedtuple('Case', 'flags expect env', defaults=(None,))


def bad(flag, *values, expect=None):
  """--flag=value for each value, each refused naming --flag."""
  return [Case((f'--{flag}={value}',), expect or f'--{flag}')
          for value in values]


def pair(*flags, expect, env=None):
  """A combination of flags that is refused; `expect` is in its line."""
  return [Case(tuple(flags), expect, env)]


# Wrong-type values, added for every flag of the parser's kind.
WRONG_TYPE = {'IntegerParser': '1.5', 'FloatParser': 'abc',
              'BooleanParser': 'maybe', 'EnumParser': 'no_such_value'}

NOT_REFUSABLE = 'nothing to refuse'
# Placeholders of the paths: {missing} does not exist, {file} is a text
# file, {empty} an empty directory, {saved} a pretraining model_dir
# (config.json of ResNet-18 x0.125 at 32 px, 10 classes, and a checkpoint).

# ---------------------------------------------------------------- run.py
# In-process: refused before TensorFlow loads.
RUN_PY = {
    'learning_rate': bad('learning_rate', -1, 'nan', 'inf'),
    'learning_rate_scaling': bad('learning_rate_scaling', 'cubic'),
    'warmup_epochs': bad('warmup_epochs', -1, 'nan', 'inf'),
    'weight_decay': bad('weight_decay', -1, 'nan', 'inf'),
    'batch_norm_decay': bad('batch_norm_decay', 0, 1, -0.5, 'nan'),
    'train_batch_size': bad('train_batch_size', 0, -1) + pair(
        '--strategy=mirrored', '--cpu_replicas=2', '--train_batch_size=3',
        expect='--train_batch_size=3 does not split evenly over the 2 '
               'replicas of --cpu_replicas=2') + pair(
        '--strategy=mirrored', '--num_gpus=4', '--train_batch_size=6',
        expect='the 4 GPUs of --num_gpus=4') + pair(
        '--strategy=multi_worker_mirrored', '--train_batch_size=3',
        expect='the 2 workers of TF_CONFIG',
        env={'TF_CONFIG': json.dumps({
            'cluster': {'worker': ['localhost:1', 'localhost:2']},
            'task': {'type': 'worker', 'index': 0}})}),
    'train_split': bad('train_split', ''),
    'train_epochs': bad('train_epochs', -1) + pair(
        '--train_epochs=0', '--train_steps=0',
        expect='--train_steps or --train_epochs'),
    'train_steps': bad('train_steps', -1),
    'eval_steps': bad('eval_steps', -1),
    'eval_batch_size': bad('eval_batch_size', 0, -1) + pair(
        '--mode=train_then_eval', '--strategy=mirrored', '--cpu_replicas=2',
        '--train_batch_size=4', '--eval_batch_size=3',
        expect='--eval_batch_size=3 does not split evenly'),
    'checkpoint_epochs': bad('checkpoint_epochs', -1),
    'checkpoint_steps': bad('checkpoint_steps', -1),
    'eval_split': bad('eval_split', ''),
    'dataset': bad('dataset', '') + pair(
        '--dataset=image_folder', '--data_dir=',
        expect='--dataset=image_folder needs --data_dir'),
    'cache_dataset': [],
    'mode': bad('mode', 'predict') + pair('--mode=eval',
                                          expect='--mode=eval needs a '
                                                 'checkpoint'),
    'train_mode': bad('train_mode', 'linear_eval') + pair(
        '--train_mode=finetune', '--model_dir={saved}',
        expect='holds a pretrain run and --train_mode=finetune'),
    'lineareval_while_pretraining': [],
    'checkpoint': bad('checkpoint', '{missing}', '{file}', '{empty}') + pair(
        '--train_mode=finetune', expect='needs --checkpoint') + pair(
        '--train_mode=finetune', '--checkpoint={saved}', '--resnet_depth=34',
        expect='--checkpoint {saved} holds a model with resnet_depth=18 '
               '(flags: 34)'),
    'zero_init_logits_layer': [],
    'fine_tune_after_block': bad('fine_tune_after_block', -2, 5) + pair(
        '--fine_tune_after_block=2',
        expect='pretraining needs --fine_tune_after_block=-1'),
    'master': pair('--master=grpc://10.0.0.2:8470',
                   expect='--master applies to the TPU strategy'),
    'model_dir': bad('model_dir', '', expect='--model_dir is required') +
                 bad('model_dir', '{file}', '{file}/model',
                     expect='is not writable') + pair(
        '--model_dir={saved}', '--resnet_depth=34',
        expect='--model_dir {saved} holds a model with resnet_depth=18 '
               '(flags: 34)'),
    'data_dir': pair('--dataset=image_folder', '--data_dir={missing}',
                     expect='--data_dir {missing} does not exist') + pair(
        '--dataset=image_folder', '--data_dir={file}',
        expect='--data_dir {file} is a file') + pair(
        '--dataset=image_folder', '--data_dir={empty}',
        expect='--data_dir {empty} holds no split folders') + pair(
        '--dataset=fashion_mnist', '--data_dir={file}',
        expect='--data_dir {file} is a file'),
    'use_tpu': pair('--use_tpu', '--strategy=mirrored', expect='--use_tpu'),
    # Where the TPU is, any text: a wrong one fails making the strategy
    # (--strategy=tpu, TensorFlow table); without the TPU strategy, refused.
    'tpu_name': pair('--tpu_name=my-tpu', expect='--tpu_name applies to the '
                     'TPU strategy') + pair(
        '--tpu_name=my-tpu', '--strategy=mirrored',
        expect='--tpu_name applies to the TPU strategy'),
    'tpu_zone': pair('--tpu_zone=us-central1-b', '--use_tpu=false',
                     expect='--tpu_zone applies to the TPU strategy'),
    'gcp_project': pair('--gcp_project=p', expect='--gcp_project applies to '
                        'the TPU strategy'),
    'optimizer': bad('optimizer', 'sgd'),
    'momentum': bad('momentum', -0.1, 1, 'nan'),
    'eval_name': bad('eval_name', 'a/b'),
    'keep_checkpoint_max': bad('keep_checkpoint_max', 0, -1),
    'keep_hub_module_max': bad('keep_hub_module_max', -1),
    'temperature': bad('temperature', 0, -1, 'nan', 'inf'),
    'hidden_norm': [],
    'proj_head_mode': bad('proj_head_mode', 'mlp'),
    'proj_out_dim': bad('proj_out_dim', 0, -1),
    'num_proj_layers': bad('num_proj_layers', -1, 0),
    'ft_proj_selector': bad('ft_proj_selector', -2) + pair(
        '--ft_proj_selector=4', '--num_proj_layers=3',
        expect='--ft_proj_selector must be in -1..3') + pair(
        '--proj_head_mode=linear', '--ft_proj_selector=2',
        expect='--ft_proj_selector must be in -1..1') + pair(
        '--proj_head_mode=none', '--ft_proj_selector=1',
        expect='--ft_proj_selector must be in -1..0'),
    'global_bn': [],
    'width_multiplier': bad('width_multiplier', 0, -1, 'nan', 'inf',
                            0.01) + pair(
        '--width_multiplier=0.02', '--sk_ratio=0.0625',
        expect='--width_multiplier=0.02 leaves the stem without channels'),
    'resnet_depth': bad('resnet_depth', 19, 0, -50),
    'sk_ratio': bad('sk_ratio', -0.1, 1, 'nan'),
    'se_ratio': bad('se_ratio', -0.1, 1, 'nan'),
    'image_size': bad('image_size', 0, -1),
    'color_jitter_strength': bad('color_jitter_strength', -1, 'nan', 'inf'),
    'use_blur': [],
    'train_summary_steps': bad('train_summary_steps', -1),
    'variable_schema': NOT_REFUSABLE + ': accepted for compatibility and '
                       'ignored',
    'strategy': bad('strategy', 'horovod') + pair(
        '--strategy=multi_worker_mirrored',
        expect='--strategy=multi_worker_mirrored reads the cluster from '
               'TF_CONFIG', env={'TF_CONFIG': '{not json'}),
    'num_gpus': bad('num_gpus', -1) + pair(
        '--num_gpus=2', expect='--num_gpus applies to --strategy=mirrored') +
                pair('--strategy=mirrored', '--num_gpus=2',
                     '--cpu_replicas=2',
                     expect='--num_gpus (GPU replicas) and --cpu_replicas'),
    'cpu_replicas': bad('cpu_replicas', -1) + pair(
        '--cpu_replicas=2',
        expect='--cpu_replicas applies to --strategy=mirrored') + pair(
        '--strategy=multi_worker_mirrored', '--cpu_replicas=2',
        expect='--cpu_replicas applies to --strategy=mirrored'),
    'steps_per_loop': bad('steps_per_loop', -1),
    # Every precision goes with every optimizer (float16 wraps it in a
    # LossScaleOptimizer).
    'precision': bad('precision', 'fp8'),
    'bfloat16_parts': bad('bfloat16_parts', 'some'),
    'jit_compile': [],
    'blur_placement': bad('blur_placement', 'gpu'),
    'crop_min_area': bad('crop_min_area', 0, 1.5, -0.1, 'nan'),
    'color_jitter_version': bad('color_jitter_version', 'v3'),
    'label_fraction': bad('label_fraction', 0, 1.5, -0.5, 'nan'),
    'label_seed': bad('label_seed', -1, 2**32),
    'unlabeled_split': NOT_REFUSABLE + ' before TensorFlow loads: split '
                       'names are the dataset\'s (TensorFlow table); empty '
                       'means --train_split',
    'teacher_checkpoint': pair(
        '--train_mode=distill', expect='needs --teacher_checkpoint') + [
            Case(('--train_mode=distill', f'--teacher_checkpoint={path}'),
                 '--teacher_checkpoint: no checkpoint')
            for path in ('{missing}', '{file}', '{empty}')],
    'distill_temperature': bad('distill_temperature', 0, -1, 'nan', 'inf'),
    'distill_alpha': bad('distill_alpha', -0.1, 1.5, 'nan'),
    'num_classes': bad('num_classes', -1) + pair(
        '--model_dir={saved}', '--num_classes=12',
        expect='num_classes=10 (flags: 12)'),
    'skip_bad_images': [],
    'knn_every_steps': bad('knn_every_steps', -1),
    'knn_bank_size': bad('knn_bank_size', 0, -1),
    'memory_size': bad('memory_size', -1) + pair(
        '--memory_size=8', '--train_batch_size=8',
        expect='--memory_size must hold at least one step') + pair(
        '--train_mode=finetune', '--checkpoint=scratch', '--memory_size=64',
        expect='--memory_size is the memory of negatives'),
    'memory_momentum': bad('memory_momentum', -0.1, 1, 'nan'),
    'deterministic': [],
    'seed': bad('seed', -1, 2**32),
    'export_dir': bad('export_dir', '{file}', '{file}/export'),
    'summary_images': [],
    'export': [],
    'show_augmentations': bad('show_augmentations', '{empty}',
                              '{file}/grid.png') + pair(
        '--show_augmentations={empty}/grid.png', '--crop_min_area=0',
        expect='--crop_min_area'),
}
# Not a flag's value.
RUN_PY_OTHER = {
    'unknown flag': Case(('--no_such_flag=1',), 'no_such_flag'),
    'positional argument': Case(('pretrain',), 'unexpected arguments: '
                                'pretrain'),
}

# Refused once TensorFlow is there: run by tests/flag_error_run.py, against
# {model} (a model_dir holding a checkpoint and an export) unless they give
# another --model_dir. 'mirrored' stands for 2 GPUs there.
RUN_PY_WITH_TF = {
    'train_split': [Case(('--train_split=nope',),
                         "--train_split: split 'nope' not in dataset")],
    'eval_split': [Case(('--eval_split=nope', '--mode=train_then_eval'),
                        "--eval_split: split 'nope' not in dataset")],
    'unlabeled_split': [Case(
        ('--train_mode=distill', '--teacher_checkpoint={model}',
         '--unlabeled_split=nope', '--model_dir={work}/distill'),
        "--unlabeled_split: split 'nope' not in dataset")],
    'dataset': [
        Case(('--dataset=no_such_dataset_xyz',),
             "--dataset=no_such_dataset_xyz: unknown dataset"),
        Case(('--dataset=not a name',),
             '--dataset=not a name: Parsing builder name string'),
        Case(('--dataset=image_folder', '--data_dir={work}/two_classes'),
             'holds a model with num_classes=10 and this run would build 2 '
             '(the classes of --dataset=image_folder)')],
    'num_classes': [Case(('--num_classes=5', '--model_dir={work}/classes'),
                         '--num_classes=5 is fewer than the 10 classes')],
    'eval_steps': [Case(('--mode=eval', '--eval_steps=100'),
                        '--eval_steps=100 batches of --eval_batch_size=256 '
                        'is more than --eval_split=test holds')],
    'strategy': [Case(('--strategy=tpu',), '--strategy=tpu: cannot create')],
    'num_gpus': [Case(('--strategy=mirrored', '--num_gpus=2'),
                      '--num_gpus=2 but TensorFlow sees 0 GPUs')],
    'train_batch_size': [Case(
        ('--strategy=mirrored', '--train_batch_size=3'),
        '--train_batch_size=3 does not split evenly over the 2 replicas of '
        '--strategy=mirrored')],
    'eval_batch_size': [Case(
        ('--strategy=mirrored', '--train_batch_size=4',
         '--mode=train_then_eval', '--eval_batch_size=3'),
        '--eval_batch_size=3 does not split evenly over the 2 replicas')],
    # Refused before TensorFlow loads, here against {model} too.
    'model_dir': [Case(('--resnet_depth=34',), 'resnet_depth=18 (flags: 34)'),
                  Case(('--train_mode=finetune',),
                       'holds a pretrain run and --train_mode=finetune')],
    'export_dir': [Case(('--export_dir={model}/checkpoint',),
                        '--export_dir {model}/checkpoint is a file')],
    'cpu_replicas': [Case(('--strategy=mirrored', '--cpu_replicas=2',
                           '--train_batch_size=3'),
                          '--train_batch_size=3 does not split evenly over '
                          'the 2 replicas of --cpu_replicas=2')],
    'width_multiplier': [Case(('--width_multiplier=nan',),
                              '--width_multiplier must be a finite number')],
}
# The flags every driver case starts with (the case's own come after).
DRIVER_BASE = ['--train_steps=2', '--eval_split=test',
               '--model_dir={model}']


def _flags_of(module_name):
  return {flag.name: flag for flag in FLAGS.get_flags_for_module(module_name)}


def _with_wrong_types(table, flags):
  """The table plus each flag's wrong-type case."""
  cases = {}
  for name, entry in table.items():
    entry = [] if isinstance(entry, str) else list(entry)
    value = WRONG_TYPE.get(type(flags[name].parser).__name__)
    if value is not None:
      entry.append(Case((f'--{name}={value}',), f'--{name}'))
    cases[name] = entry
  return cases


def run_py_cases():
  """[(id, Case)] of the in-process table."""
  cases = _with_wrong_types(RUN_PY, _flags_of(cli.__name__))
  result = [(f'{name}-{index}', case) for name, entries in sorted(
      cases.items()) for index, case in enumerate(entries)]
  return result + sorted(RUN_PY_OTHER.items())


# ---------------------------------------------------------------- coverage
def test_tables_cover_every_flag(capsys):
  """A flag without an entry (cases, or the reason it has none) fails."""
  run_flags = _flags_of(cli.__name__)
  assert set(RUN_PY) == set(run_flags), (
      'run.py flags without a table entry: '
      f'{sorted(set(run_flags) - set(RUN_PY))}; entries of no flag: '
      f'{sorted(set(RUN_PY) - set(run_flags))}')
  assert set(RUN_PY_WITH_TF) <= set(run_flags)
  for name, entry in RUN_PY.items():
    cases = _with_wrong_types({name: entry}, run_flags)[name]
    assert (cases or name in RUN_PY_WITH_TF or
            entry.startswith(NOT_REFUSABLE)), name
  parser_flags = {option for action in export_cli.make_parser()._actions  # pylint: disable=protected-access
                  for option in action.option_strings} - {'-h', '--help'}
  assert set(EXPORT) == parser_flags
  in_process = len(run_py_cases())
  with_tf = sum(len(cases) for cases in RUN_PY_WITH_TF.values())
  export_cases = sum(len(cases) for cases in EXPORT.values())
  with capsys.disabled():
    print(f'\nrun.py: {len(run_flags)} flags, {in_process + with_tf} cases '
          f'({in_process} in-process, {with_tf} with TensorFlow); export: '
          f'{len(parser_flags)} flags, {export_cases} cases; benchmark: '
          'counted by test_benchmark_flags')


# ---------------------------------------------------------------- in process
@pytest.fixture(scope='module')
def paths(tmp_path_factory):
  """The placeholders' paths (see RUN_PY)."""
  root = tmp_path_factory.mktemp('paths')
  (root / 'file').write_text('not a checkpoint, not a directory\n')
  (root / 'empty').mkdir()
  saved = root / 'saved'
  saved.mkdir()
  (saved / 'config.json').write_text(json.dumps({
      'resnet_depth': 18, 'width_multiplier': 0.125, 'sk_ratio': 0.0,
      'se_ratio': 0.0, 'image_size': 32, 'proj_head_mode': 'nonlinear',
      'num_proj_layers': 3, 'proj_out_dim': 128, 'ft_proj_selector': 0,
      'batch_norm_decay': 0.9, 'num_classes': 10, 'train_mode': 'pretrain',
      'dataset': 'synthetic'}))
  (saved / 'ckpt-1.index').write_bytes(b'')
  (saved / 'ckpt-1.data-00000-of-00001').write_bytes(b'')
  (saved / 'checkpoint').write_text('model_checkpoint_path: "ckpt-1"\n'
                                    'all_model_checkpoint_paths: "ckpt-1"\n')
  return {'missing': str(root / 'missing'), 'file': str(root / 'file'),
          'empty': str(root / 'empty'), 'saved': str(saved), 'root': root}


def _snapshot(root):
  result = {}
  for parent, _, names in os.walk(root):
    for name in names:
      path = os.path.join(parent, name)
      with open(path, 'rb') as f:
        result[os.path.relpath(path, root)] = f.read()
  return result


BASE = ['--dataset=synthetic', '--image_size=32', '--resnet_depth=18',
        '--width_multiplier=0.125', '--train_steps=2', '--eval_split=test']


@pytest.fixture
def refuse_in_process(monkeypatch, capsys, paths, tmp_path):
  """run.py's run() on BASE + the case's flags, stopped where TensorFlow
  would load; returns (exit status, stderr)."""
  monkeypatch.setattr(sys, 'argv', ['run.py'])
  monkeypatch.setattr(cli, 'main', cli.check_flags)

  def refuse(case):
    for name, value in (case.env or {}).items():
      monkeypatch.setenv(name, value)
    flags = [flag.format(**paths) for flag in case.flags]
    tensorflow_before = 'tensorflow' in sys.modules
    FLAGS.unparse_flags()
    status = 'accepted'
    try:
      cli.run(cli.parse_flags(
          ['run.py'] + BASE + [f'--model_dir={tmp_path / "model"}'] + flags))
    except SystemExit as exit_:
      status = exit_.code
    finally:
      FLAGS.unparse_flags()
    if not tensorflow_before:
      assert 'tensorflow' not in sys.modules, 'TensorFlow was loaded'
    return status, capsys.readouterr().err
  return refuse


def _assert_one_line(status, stderr, expect, program='run.py'):
  assert 'Traceback' not in stderr, stderr
  lines = stderr.strip().splitlines()
  assert status == 2, (status, stderr)
  assert len(lines) == 1, lines
  assert lines[0].startswith(f'{program}: error:'), lines
  assert expect in lines[0], (expect, lines[0])


def test_the_base_flags_are_accepted(refuse_in_process):
  """The control: the flags every case adds to pass the checks."""
  assert refuse_in_process(Case((), None)) == ('accepted', '')


@pytest.mark.parametrize('name, case', run_py_cases(),
                         ids=[name for name, _ in run_py_cases()])
def test_run_py_refuses(name, case, refuse_in_process, paths):
  del name
  before = _snapshot(paths['saved'])
  status, stderr = refuse_in_process(case)
  _assert_one_line(status, stderr, case.expect.format(**paths))
  assert _snapshot(paths['saved']) == before


def test_the_reported_command_exits_2_with_one_line(tmp_path):
  """The command of the report, as a user runs it: one line, exit 2, in
  about a second (before TensorFlow loads), nothing written."""
  model_dir = tmp_path / 'm'
  started = time.time()
  result = subprocess.run(
      [sys.executable, 'run.py', '--dataset=synthetic', '--image_size=32',
       '--resnet_depth=18', '--width_multiplier=0.125',
       '--strategy=mirrored', '--cpu_replicas=2', '--train_batch_size=3',
       '--train_steps=2', f'--model_dir={model_dir}'],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
      env=dict(os.environ, CUDA_VISIBLE_DEVICES=''))
  _assert_one_line(result.returncode, result.stderr,
                   '--train_batch_size=3 does not split evenly over the 2 '
                   'replicas of --cpu_replicas=2')
  assert time.time() - started < 20
  assert not model_dir.exists()


# ---------------------------------------------------------------- with TensorFlow
def _driver_cases():
  return [(f'{name}-{index}', case) for name, cases in sorted(
      RUN_PY_WITH_TF.items()) for index, case in enumerate(cases)]


@pytest.fixture(scope='module')
def driver(tmp_path_factory):
  """tests/flag_error_run.py's result over RUN_PY_WITH_TF."""
  work = tmp_path_factory.mktemp('driver')
  cases_path = work / 'cases.json'
  cases_path.write_text(json.dumps([
      {'name': name, 'flags': DRIVER_BASE + list(case.flags)}
      for name, case in _driver_cases()]))
  result = subprocess.run(
      [sys.executable, os.path.join(REPO_ROOT, 'tests', 'flag_error_run.py'),
       str(work), str(cases_path)],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
      env=dict(os.environ, CUDA_VISIBLE_DEVICES='', TF_CPP_MIN_LOG_LEVEL='2'))
  assert result.returncode == 0, result.stderr[-3000:]
  output = json.loads(result.stdout.strip().splitlines()[-1])
  output['cases'] = {case['name']: case for case in output['cases']}
  output['work'] = str(work)
  return output


@pytest.mark.parametrize('name, case', _driver_cases(),
                         ids=[name for name, _ in _driver_cases()])
def test_run_py_refuses_with_tensorflow(name, case, driver):
  result = driver['cases'][name]
  paths = {'model': os.path.join(driver['work'], 'model'),
           'work': driver['work']}
  _assert_one_line(result['status'], result['stderr'],
                   case.expect.format(**paths))


def test_refused_runs_leave_the_model_dir_byte_for_byte(driver):
  """Every case above ran against a model_dir holding a checkpoint and an
  export (but those naming another --model_dir): its files, their bytes,
  are as before."""
  before, after = driver['before'], driver['after']
  assert any(path.startswith('hub/') for path in before)
  assert any(path.startswith('saved_model/') for path in before)
  assert 'checkpoint' in before and 'config.json' in before
  assert any(path.startswith('ckpt-1.') for path in before)
  against_model = [name for name, case in _driver_cases()
                   if not any(flag.startswith('--model_dir=')
                              for flag in case.flags)]
  assert len(against_model) >= 10
  assert after == before


# ---------------------------------------------------------------- export
EXPORT = {
    '--model_dir': [
        (['--export_dir={out}'], 'the following arguments are required: '
         '--model_dir'),
        (['--model_dir={missing}', '--export_dir={out}'],
         '--model_dir {missing} does not exist'),
        (['--model_dir={file}', '--export_dir={out}'],
         '--model_dir {file} is a file'),
        (['--model_dir={empty}', '--export_dir={out}'],
         '--model_dir {empty} has no config.json'),
        (['--model_dir={no_checkpoint}', '--export_dir={out}'],
         '--model_dir: no checkpoint in directory')],
    '--export_dir': [
        (['--model_dir={saved}'], 'the following arguments are required: '
         '--export_dir'),
        (['--model_dir={saved}', '--export_dir={file}'],
         '--export_dir {file} is a file'),
        (['--model_dir={saved}', '--export_dir={file}/export'],
         '--export_dir {file}/export cannot be created')],
    '--checkpoint': [
        (['--model_dir={saved}', '--export_dir={out}',
          f'--checkpoint={path}'], '--checkpoint: no checkpoint')
        for path in ('{missing}', '{file}', '{empty}')],
    '--keep_hub_module_max': [
        (['--model_dir={saved}', '--export_dir={out}',
          f'--keep_hub_module_max={value}'], '--keep_hub_module_max')
        for value in (-1, 'x')],
    '--overwrite': [(['--model_dir={saved}', '--export_dir={out}',
                      '--overwrite=yes'], '--overwrite')],
}


@pytest.mark.parametrize('flag', sorted(EXPORT))
def test_export_refuses(flag, paths, capsys):
  no_checkpoint = paths['root'] / 'no_checkpoint'
  no_checkpoint.mkdir(exist_ok=True)
  (no_checkpoint / 'config.json').write_text('{}')
  values = dict(paths, out=str(paths['root'] / 'out'),
                no_checkpoint=str(no_checkpoint))
  tensorflow_before = 'tensorflow' in sys.modules
  for args, expect in EXPORT[flag]:
    args = [arg.format(**values) for arg in args]
    try:
      status = export_cli.main(args)
    except SystemExit as exit_:
      status = exit_.code
    captured = capsys.readouterr()
    _assert_one_line(status, captured.err, expect.format(**values),
                     program=export_cli.PROGRAM)
    assert not captured.out
  assert not (paths['root'] / 'out').exists()
  if not tensorflow_before:
    assert 'tensorflow' not in sys.modules


# ---------------------------------------------------------------- benchmark
# Its own flags; run.py's of the same name take run.py's single-value cases.
BENCHMARK = {
    'steps': bad('steps', 0, -1),
    'warmup_steps': bad('warmup_steps', -1),
    'component': [],
    'stage_repeats': bad('stage_repeats', -1),
    'feed': [],
    'input_datasets': NOT_REFUSABLE + ': any names: the input table reports '
                      'unavailable ones as such',
    'input_image_sizes': bad('input_image_sizes', 'abc', 0),
    'input_batches': bad('input_batches', 0),
    'input_warmup_batches': bad('input_warmup_batches', -1),
    'measure_peak': [],
    'peak_matrix_size': bad('peak_matrix_size', -1),
    'variant': bad('variant', 'resnet_depth=50', 'jit_compile',
                   'feed=host') + [
        Case(('--variant=precision=fp8',),
             "--precision must be one of float32, bfloat16, float16, got "
             "'fp8' (in --variant=\"precision=fp8\")"),
        Case(('--variant=steps_per_loop=0',),
             '--steps_per_loop must be positive')],
    'steps_per_loop': bad('steps_per_loop', 0),
    'strategy': bad('strategy', 'tpu'),
    'dataset': pair('--component=stage', '--dataset=imagenet2012',
                    expect='--component=stage runs on --dataset='),
    'data_dir': NOT_REFUSABLE + ': read by the input table only, which '
                'reports an unreadable dataset as unavailable',
    'train_batch_size': pair('--strategy=mirrored', '--cpu_replicas=2',
                             '--train_batch_size=3',
                             expect='--train_batch_size=3 does not split '
                                    'evenly'),
    'cpu_replicas': pair('--cpu_replicas=2',
                         expect='--cpu_replicas applies to '
                                '--strategy=mirrored'),
    'num_gpus': pair('--num_gpus=2', expect='--num_gpus applies to '
                                            '--strategy=mirrored'),
    'fine_tune_after_block': pair('--fine_tune_after_block=1',
                                  expect='pretraining needs '
                                         '--fine_tune_after_block=-1'),
    'memory_size': pair('--memory_size=100', expect='--memory_size must '
                                                    'hold at least one step'),
}

BENCHMARK_RUNNER = r'''
import contextlib, io, json, sys
from tf_simclr import benchmark
from tf_simclr.benchmark import cli

class Accepted(Exception):
  pass

def accepted(*unused):
  raise Accepted()

benchmark.run_benchmark = cli.run_stage_cost = accepted
defined = cli.FLAGS.get_flags_for_module(cli.__name__)
flags = sorted(flag.name for flag in defined)
parsers = {flag.name: type(flag.parser).__name__ for flag in defined}
results = []
for case in json.loads(sys.stdin.read()):
  cli.FLAGS.unparse_flags()
  stderr = io.StringIO()
  with contextlib.redirect_stderr(stderr):
    try:
      cli.main(cli.parse_flags([cli.PROGRAM] + case))
      status = 0
    except SystemExit as exit_:
      status = exit_.code
    except Accepted:
      status = 'accepted'
  results.append({'status': status, 'stderr': stderr.getvalue()})
print(json.dumps({'flags': flags, 'parsers': parsers, 'results': results,
                  'tensorflow': 'tensorflow' in sys.modules}))
'''


def _run_benchmark_cases(cases):
  result = subprocess.run(
      [sys.executable, '-c', BENCHMARK_RUNNER], input=json.dumps(cases),
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, CUDA_VISIBLE_DEVICES=''))
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


def test_benchmark_flags(capsys):
  """Every flag of `python -m tf_simclr.benchmark`: its cases, run.py's
  single-value cases for the flags of the same name, the wrong types."""
  described = _run_benchmark_cases([])
  flags = set(described['flags'])
  shared = {name for name in flags if name in RUN_PY}
  assert set(BENCHMARK) | shared == flags, sorted(
      flags - set(BENCHMARK) - shared)
  cases = []
  for name in sorted(flags):
    entry = BENCHMARK.get(name, [])
    entry = [] if isinstance(entry, str) else list(entry)
    if name in shared and not isinstance(RUN_PY[name], str):
      entry += [case for case in RUN_PY[name] if len(case.flags) == 1 and
                not case.env and '{' not in case.flags[0] and
                case.expect == f'--{name}']
    value = WRONG_TYPE.get(described['parsers'][name])
    if value is not None:
      entry.append(Case((f'--{name}={value}',), f'--{name}'))
    assert entry or isinstance(BENCHMARK.get(name), str), name
    cases += [(name, case) for case in entry]
  # The first: no flag (the control, accepted).
  output = _run_benchmark_cases([[]] + [list(case.flags)
                                        for _, case in cases])
  assert not output['tensorflow']
  assert output['results'][0] == {'status': 'accepted', 'stderr': ''}
  failures = []
  for (name, case), result in zip(cases, output['results'][1:]):
    try:
      _assert_one_line(result['status'], result['stderr'], case.expect,
                       program='python -m tf_simclr.benchmark')
    except AssertionError as error:
      failures.append(f'{name} {case.flags}: {error}')
  assert not failures, '\n'.join(failures)
  with capsys.disabled():
    print(f'\nbenchmark: {len(flags)} flags, {len(cases)} cases')
