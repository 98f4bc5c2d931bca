r"""The main job's stages, run in one process: pretrain -> finetune -> distill
-> export on offline Fashion-MNIST with a small ResNet-18 (1/8 width, 28 px).

  python scripts/main_job.py          # what `bash scripts/pipeline.sh` runs after its setup

Each stage is run.py's own main() with run.py flags (run.run_in_process), so
TensorFlow starts and the dataset's keys are read once for the three stages.
Each stage's whole output (Python and TensorFlow's C++ logging) goes to
OUT/<stage>.log; the terminal gets one line per stage with its test-split
result and time, and under it the stage's warnings and errors, without the
messages every CPU-only TensorFlow start prints. Sizes come from the
environment: OUT, WIDTH, PRETRAIN_STEPS, FINETUNE_EPOCHS, DISTILL_STEPS.
Exit status 0; 2 when a stage rejects its flags or input (one line); 1 when
a stage fails otherwise (its log's last lines are shown).
"""

import contextlib
import json
import os
import re
import sys
import time

# TensorFlow's C++ INFO lines (CUDA stubs, CPU feature notes) are noise here.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

# A warning or an error line: absl's W/E lines (Python and C++), Python's
# warnings module, uncaught errors.
PROBLEM = re.compile(r'^[WE][0-9]{4} |Warning:|^ERROR')
# Messages that every CPU-only TensorFlow start prints and that say nothing
# about the run: the failed CUDA probe, plugin registrations, TFDS
# deprecations.
BENIGN = re.compile(
    r'deprecation\.py|FeatureConnector\.dtype|cuInit|cuda_(dnn|fft|blas)|'
    r'Unable to register|TF-TRT|oneDNN custom operations|computation placer|'
    r'absl::InitializeLog|cpu_feature_guard|rebuild TensorFlow|'
    r'Logging before flag parsing')


def problems(log_text):
  """The lines of a stage's log a person should see: warnings and errors,
  without the benign start-up messages."""
  return [line for line in log_text.splitlines()
          if PROBLEM.search(line) and not BENIGN.search(line)]


def summary_line(title, result, seconds):
  """'== title: encoder kNN ..., test top-1 ..., teacher agreement ... at step
  N (S s)' from a stage's result.json."""
  parts = []
  if 'knn_top_1' in result:
    parts.append(f"encoder kNN {result['knn_top_1']:.4f}")
  if 'label_top_1_accuracy' in result:
    parts.append(f"test top-1 {result['label_top_1_accuracy']:.4f}")
  if 'teacher_agreement' in result:
    parts.append(f"teacher agreement {result['teacher_agreement']:.3f}")
  return (f"== {title}: {', '.join(parts)} at step {result['global_step']} "
          f'({seconds:.0f} s)')


@contextlib.contextmanager
def output_to(path):
  """Standard output and error of this process into the file at path: at
  the file-descriptor level (the C++ libraries' logging, and Python's
  streams where they are the process's) and sys.stdout / sys.stderr
  wherever they point."""
  sys.stdout.flush()
  sys.stderr.flush()
  saved = os.dup(1), os.dup(2)
  try:
    with open(path, 'w', buffering=1) as log:
      os.dup2(log.fileno(), 1)
      os.dup2(log.fileno(), 2)
      with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        yield
  finally:
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(saved[0], 1)
    os.dup2(saved[1], 2)
    os.close(saved[0])
    os.close(saved[1])


DEFAULT_OUT = 'runs/fashion_mnist'


def stages(env):
  """[(name, title, run.py flags)] of the main job, sizes from env."""
  out = env.get('OUT', DEFAULT_OUT)
  common = ['--dataset=fashion_mnist', '--image_size=28', '--resnet_depth=18',
            f'--width_multiplier={env.get("WIDTH", "0.125")}',
            '--eval_split=test', '--eval_batch_size=1000',
            '--mode=train_then_eval', '--global_bn=false',
            '--keep_checkpoint_max=2', '--cache_dataset']
  model_dir = lambda name: [f'--model_dir={out}/{name}']  # pylint: disable=unnecessary-lambda-assignment
  return [
      # No linear head on frozen features while pretraining: after half an
      # epoch it reads far below what the encoder gives (the kNN line) and
      # its training and evaluation pass cost seconds.
      ('pretrain', 'pretrain (no labels; encoder kNN on the test split)',
       common + model_dir('pretrain') + [
           '--train_mode=pretrain', '--lineareval_while_pretraining=false',
           # Batch 256: 0.47 epochs.
           f'--train_steps={env.get("PRETRAIN_STEPS", "110")}',
           '--train_batch_size=256', '--learning_rate=1.0',
           '--weight_decay=1e-6', '--warmup_epochs=0.1', '--temperature=0.2',
           '--color_jitter_strength=0.5', '--use_blur=false',
           '--knn_bank_size=10000', '--export=false']),
      ('finetune', 'finetune (10 % labels, from head layer 1)',
       common + model_dir('finetune') + [
           '--train_mode=finetune', f'--checkpoint={out}/pretrain',
           '--label_fraction=0.1',
           # Of the 6000 labeled images.
           f'--train_epochs={env.get("FINETUNE_EPOCHS", "12")}',
           '--train_batch_size=128', '--optimizer=momentum',
           '--learning_rate=0.2', '--weight_decay=5e-4', '--warmup_epochs=0',
           # Whole images, flipped (on validation 87.9 % against 83.6 with
           # the paper's crops of 8-100 % of the image, 82.0 with 25-100 %).
           '--crop_min_area=1',
           '--ft_proj_selector=1', '--zero_init_logits_layer',
           '--export=false']),
      # The student starts from the finetuned network's backbone and head, a
      # new linear layer, and learns the teacher's predictions.
      ('distill', 'distill (self-distillation, no labels)',
       common + model_dir('distill') + [
           '--train_mode=distill', f'--teacher_checkpoint={out}/finetune',
           f'--checkpoint={out}/finetune', '--ft_proj_selector=1',
           '--zero_init_logits_layer',
           # Batch 128: 0.26 epochs.
           f'--train_steps={env.get("DISTILL_STEPS", "120")}',
           '--train_batch_size=128', '--optimizer=momentum',
           '--learning_rate=0.2', '--weight_decay=1e-4',
           '--warmup_epochs=0.05', '--crop_min_area=1']),  # The teacher's crops.
  ]


def main():
  from absl import logging  # pylint: disable=import-outside-toplevel
  logging.use_absl_handler()  # absl's W/E line prefixes, as run.py prints.
  import run as run_py  # pylint: disable=import-outside-toplevel
  out = os.environ.get('OUT', DEFAULT_OUT)
  os.makedirs(out, exist_ok=True)
  from absl import flags as absl_flags  # pylint: disable=import-outside-toplevel
  for name, title, flags in stages(os.environ):
    started = time.time()
    log_path = os.path.join(out, f'{name}.log')
    failed = None
    with output_to(log_path):
      try:
        run_py.run_in_process(['run.py', *flags])
      except BaseException as error:  # pylint: disable=broad-except
        failed = error
        bad_input = isinstance(error, (absl_flags.Error,) +
                               run_py.user_errors())
        if not bad_input:
          logging.exception('stage %s failed', name)
    with open(log_path) as f:
      log_text = f.read()
    if failed is not None:
      # Bad flags or input: one line, exit 2 (as run.py). Anything else:
      # the log's last lines (its traceback), exit 1.
      print(f'== {title}: FAILED: {failed} (log: {log_path})',
            file=sys.stderr)
      if bad_input:
        return 2
      print('\n'.join(log_text.splitlines()[-20:]), file=sys.stderr)
      return 1
    for line in problems(log_text):
      print(f'   {line}')
    with open(os.path.join(out, name, 'result.json')) as f:
      result = json.load(f)
    print(summary_line(title, result, time.time() - started), flush=True)
  print(f'== exports: {out}/distill/hub/proj_head_{{0..3}}  '
        f'{out}/distill/saved_model/*')
  return 0


if __name__ == '__main__':
  sys.exit(main())
