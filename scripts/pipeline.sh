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
# changed through the environment, e.g. PRETRAIN_STEPS=2000 WIDTH=0.25.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${SKIP_SETUP:-0}" = 1 ] || bash scripts/setup_env.sh

OUT=${OUT:-runs/fashion_mnist}
WIDTH=${WIDTH:-0.125}
PRETRAIN_STEPS=${PRETRAIN_STEPS:-110}   # batch 256: 0.47 epochs
FINETUNE_EPOCHS=${FINETUNE_EPOCHS:-12}  # of the 6000 labeled images
DISTILL_STEPS=${DISTILL_STEPS:-120}     # batch 128: 0.26 epochs
COMMON=(--dataset=fashion_mnist --image_size=28 --resnet_depth=18
        --width_multiplier="$WIDTH" --eval_split=test --eval_batch_size=1000
        --mode=train_then_eval --global_bn=false --keep_checkpoint_max=2
        --cache_dataset)
mkdir -p "$OUT"
# TensorFlow's C++ INFO lines (CUDA stubs, CPU feature notes) are noise here.
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-1}

# Messages that every CPU-only TensorFlow start prints and that say nothing
# about the run: the failed CUDA probe and the plugin-registration notes.
BENIGN='deprecation.py|FeatureConnector.dtype|cuInit|cuda_(dnn|fft|blas)|Unable to register|TF-TRT|oneDNN custom operations|computation placer|absl::InitializeLog|cpu_feature_guard|rebuild TensorFlow|Logging before flag parsing'

stage() {  # name, title, run.py flags...: runs one stage quietly
  local name=$1 title=$2 started=$SECONDS
  shift 2
  if ! python3 run.py "${COMMON[@]}" --model_dir="$OUT/$name" "$@" \
      > "$OUT/$name.log" 2>&1; then
    echo "== $title: FAILED (log: $OUT/$name.log)" >&2
    tail -n 20 "$OUT/$name.log" >&2
    exit 1
  fi
  # Warnings and errors of the stage (absl W/E lines, Python warnings).
  grep -E '^[WE][0-9]{4} |Warning:|^ERROR' "$OUT/$name.log" \
    | grep -Ev "$BENIGN" | sed 's/^/   /' || true
  python3 - "$title" "$OUT/$name" "$((SECONDS - started))" <<'EOF'
import json, sys
title, model_dir, seconds = sys.argv[1:]
result = json.load(open(f'{model_dir}/result.json'))
parts = []
if 'knn_top_1' in result:
  parts.append(f"encoder kNN {result['knn_top_1']:.4f}")
if 'label_top_1_accuracy' in result:
  parts.append(f"test top-1 {result['label_top_1_accuracy']:.4f}")
if 'teacher_agreement' in result:
  parts.append(f"teacher agreement {result['teacher_agreement']:.3f}")
print(f"== {title}: {', '.join(parts)} at step {result['global_step']} "
      f"({seconds} s)", flush=True)
EOF
}

# No linear head on frozen features while pretraining: after half an epoch
# it reads far below what the encoder gives (the kNN line) and its training
# and evaluation pass cost seconds.
stage pretrain 'pretrain (no labels; encoder kNN on the test split)' \
  --train_mode=pretrain --lineareval_while_pretraining=false --train_steps="$PRETRAIN_STEPS" \
  --train_batch_size=256 --learning_rate=1.0 --weight_decay=1e-6 \
  --warmup_epochs=0.1 --temperature=0.2 --color_jitter_strength=0.5 \
  --use_blur=false --knn_bank_size=10000 --export=false

stage finetune 'finetune (10 % labels, from head layer 1)' \
  --train_mode=finetune --checkpoint="$OUT/pretrain" --label_fraction=0.1 \
  --train_epochs="$FINETUNE_EPOCHS" --train_batch_size=128 \
  --optimizer=momentum --learning_rate=0.2 --weight_decay=5e-4 \
  --warmup_epochs=0 --ft_proj_selector=1 --zero_init_logits_layer \
  --export=false

stage distill 'distill (self-distillation, no labels)' \
  --train_mode=distill --teacher_checkpoint="$OUT/finetune" \
  --checkpoint="$OUT/finetune" --ft_proj_selector=1 --zero_init_logits_layer \
  --train_steps="$DISTILL_STEPS" --train_batch_size=128 \
  --optimizer=momentum --learning_rate=0.2 --weight_decay=1e-4 \
  --warmup_epochs=0.05

echo "== exports: $OUT/distill/hub/proj_head_{0..3}  $OUT/distill/saved_model/*"
