#!/usr/bin/env bash
# The main job on a fresh machine: set up, then SimCLRv2 end to end on offline
# Fashion-MNIST with a small ResNet-18 (1/8 width, 28 px) —
#   pretrain (the 60k train images, no labels; the encoder's kNN accuracy as
#      the monitor)
#   -> finetune (10 % of the labels, from projection-head layer 1)
#   -> distill (self-distillation on the train images, no labels; the student
#      starts from the finetuned network's backbone and head, a new linear
#      layer, and learns the teacher's predictions)
#   -> export (TF-Hub modules at every head depth + a TF Serving SavedModel),
# printing one line per stage with its test-set result. Each stage's full log
# is in OUT/<stage>.log; warnings and errors from it are shown. Sizes can be
# changed through the environment, e.g. PRETRAIN_STEPS=2000 WIDTH=0.25 (OUT,
# WIDTH, PRETRAIN_STEPS, FINETUNE_EPOCHS, DISTILL_STEPS).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${SKIP_SETUP:-0}" = 1 ] || bash scripts/setup_env.sh

# The three stages run in one Python process (scripts/main_job.py), so
# TensorFlow starts once.
exec python3 scripts/main_job.py
