"""The semi-supervised protocol's parts, for benchmarks/semi_supervised.py and
for other experiments on the same splits and stages to import.

  plan      what is run: the splits, the Plan of every stage's size and
            recipe, the choice rule (best_of) and the time estimate
  flags     run.py flags of each stage, from a Plan
  stages    runs those stages (in this process or as subprocesses), reuses
            what a work_dir already holds, records wall times
  anchors   the splits as arrays; logistic regression and kNN on raw pixels
            and on a trained encoder's features
  protocol  the arms: a pretraining's measures, the few-label sweeps, the
            students, and run_protocol over all of them
  report    results.md, the plots, the commit and machine records

Each module imports only those above it. A Plan describes one network and
recipe: another width, depth or length is dataclasses.replace(plan, ...),
which every flag builder and Plan.steps() then read. TensorFlow loads lazily,
inside the functions that need it: an entry point sets its environment (as
run.py's) before calling them.
"""

import os

# The repository's root: run.py, and where git is asked about the code.
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
