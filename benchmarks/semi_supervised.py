r"""SimCLRv2's semi-supervised protocol on offline Fashion-MNIST, end to end.

  python benchmarks/semi_supervised.py               # the protocol, <= 60 min on 2 idle CPU cores
  python benchmarks/semi_supervised.py --plan_only   # sizes, steps and the time estimate
  python benchmarks/semi_supervised.py --quick       # plumbing check, a few minutes
  python benchmarks/semi_supervised.py --scale=8     # 8x epochs and widths, for one GPU

Splits, fixed: validation = the first 5 000 training images (TFDS order),
pool = the other 55 000, test = the 10 000 test images. Label subsets are
class-balanced subsets of the pool with 6, 60 and 600 images per class (0.1 %,
1 % and 10 % of the 60 000 training images), label seeds 0, 1, 2 at 0.1 % and
1 %, seed 0 at 10 %. The unlabeled data is the whole pool, without labels.

Arms, each the same ResNet-18 (width 0.125, CIFAR stem, 28 px):
  supervised     from a random initialisation on the labeled subset only (the
                 finetune stage's crop + flip, SGD + momentum, cosine);
  simclr         one contrastive pretraining on the pool, then finetuning on
                 the subset from projection-head layer 1 (the teacher);
  self_distill   the teacher distilled into the same architecture on the
                 pool, no labels (SimCLRv2's final model);
  distill_small  the teacher distilled into a half-width student (from a
                 half-width pretraining of its own on the pool).
The encoder is also measured without finetuning: weighted kNN (k 200, cosine),
the linear probe (--fine_tune_after_block=4, the reference's linear
evaluation) and the raw-pixel anchor's logistic regression on its frozen
features, against that logistic regression and the same kNN on raw pixels.

Every choice is made on the validation split: the learning rate, then the
crop area, of the supervised baseline and of finetuning (the same number of
candidates each, per fraction, at label seed 0, then reused for seeds 1 and
2), the students' starts and learning rates (per fraction, at label seed 0),
the C of both logistic regressions. The test split is read once per final
model (`--mode=eval --eval_split=test`).

Every stage is run.py's own `main` with run.py flags; by default all of them
run in this one process (each stage costs tracing, not a TensorFlow start-up
and a dataset scan; `--subprocesses` runs each as `python run.py`). A stage
whose model_dir holds `stage_result.json` is reused: re-running with the same
--work_dir resumes. Run it from a tree nobody edits (AutoGraph reads the
sources while tracing).

Writes OUTPUT_DIR/results.json, results.md, accuracy.png, pretraining.png.
The parts (plan, stage flags, stage runner, anchors, arms, report) are in
benchmarks/protocol/.
"""

import dataclasses
import json
import os
import sys

# As run.py: oneDNN's CPU kernels also on AVX2-only CPUs (set before
# TensorFlow loads; the stages run in this process).
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '1')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

# pylint: disable=wrong-import-position
from benchmarks.protocol import experiment
from benchmarks.protocol import plan as plan_lib
from benchmarks.protocol import protocol
from benchmarks.protocol import report
# pylint: enable=wrong-import-position


def _flags(parser):
  parser.add_argument('--width', type=float, default=None,
                      help='the network\'s width multiplier (default: the '
                      'plan\'s, 1/8; the half-width student at half of it); '
                      'the estimate scales the measured rates by '
                      'plan.WIDTH_COSTS')
  parser.add_argument('--memory_size', type=int, default=0,
                      help='also run the simclr_memory arm with this buffer '
                      'size (0: not run)')
  parser.add_argument('--memory_momentum', type=float, default=0.99)
  parser.add_argument('--memory_step_cost', type=float, default=1.0,
                      help='the memory step\'s time over the plain step\'s '
                      '(python -m tf_simclr.benchmark --variant=memory_size=K): '
                      'the memory pretraining gets 1/this of the epochs')


def parse_args(argv):
  return experiment.parse_args(
      argv, __doc__.split('\n')[0],
      'print the step counts and time estimate, run nothing', _flags)


def main(argv=None):
  argv = list(sys.argv[1:] if argv is None else argv)
  args = parse_args(argv)
  plan = plan_lib.make_plan(args.scale, args.quick)
  if args.memory_size:
    plan = dataclasses.replace(plan, memory_size=args.memory_size,
                               memory_momentum=args.memory_momentum,
                               memory_step_cost=args.memory_step_cost)
  if args.width:
    plan = dataclasses.replace(plan, width=args.width,
                               student_width=args.width / 2)
  estimate = plan_lib.estimate_seconds(
      plan, rates=plan_lib.width_rates(plan, args.scale))
  print('steps:', json.dumps(plan.steps()))
  print('runs:', json.dumps(plan.runs()))
  experiment.print_estimate(estimate, args.machine)
  if args.plan_only:
    print(json.dumps(estimate, indent=1))
    return 0

  def run(stages):
    return dict(protocol.run_protocol(plan, stages, stages.echo),
                work_dir=stages.work_dir)

  def finish(results, stages):
    curves = report.read_scalars(stages.model_dir('pretrain'))
    paths = report.write_outputs(results, curves, args.output_dir)
    return paths, report.markdown_table(results)

  return experiment.run_experiment(
      'benchmarks/semi_supervised.py', argv, args, estimate, run, finish,
      records=dict(
          experiment.fraction_records(plan_lib.FRACTIONS, plan.num_train),
          plan=plan_lib.plan_record(plan, quick=args.quick, scale=args.scale)))


if __name__ == '__main__':
  sys.exit(main())
