#!/usr/bin/env bash
# The main job on a fresh machine: set up, then SimCLRv2 end to end on offline
# Fashion-MNIST with a small ResNet-18 —
#   pretrain (all 60k train images, no labels)
#   -> finetune (10 % of the labels, from projection-head layer 1)
#   -> distill (self-distillation on all train images, no labels)
#   -> export (TF-Hub modules at every head depth + a TF Serving SavedModel),
# printing each stage's test-set result. Sizes can be changed through the
# environment, e.g. PRETRAIN_STEPS=2000 WIDTH=0.5 bash scripts/pipeline.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${SKIP_SETUP:-0}" = 1 ] || bash scripts/setup_env.sh

OUT=${OUT:-runs/fashion_mnist}
WIDTH=${WIDTH:-0.125}
BATCH=${BATCH:-128}
PRETRAIN_STEPS=${PRETRAIN_STEPS:-300}
FINETUNE_STEPS=${FINETUNE_STEPS:-200}
DISTILL_STEPS=${DISTILL_STEPS:-300}
COMMON=(--dataset=fashion_mnist --image_size=32 --resnet_depth=18
        --width_multiplier="$WIDTH" --train_batch_size="$BATCH"
        --eval_split=test --eval_batch_size=500 --mode=train_then_eval
        --global_bn=false --steps_per_loop=50 --keep_checkpoint_max=2)

show() {  # stage name, model_dir: one line from its result.json
  python3 - "$1" "$2" <<'EOF'
import json, sys
stage, model_dir = sys.argv[1:]
result = json.load(open(f'{model_dir}/result.json'))
extra = (f", teacher agreement {result['teacher_agreement']:.3f}"
         if 'teacher_agreement' in result else '')
print(f"== {stage}: test top-1 {result['label_top_1_accuracy']:.4f}, "
      f"top-5 {result['label_top_5_accuracy']:.4f} at step "
      f"{result['global_step']}{extra}  ({model_dir})")
EOF
}

python3 run.py "${COMMON[@]}" --train_mode=pretrain \
  --train_steps="$PRETRAIN_STEPS" --learning_rate=1.0 --weight_decay=1e-6 \
  --warmup_epochs=0.2 --temperature=0.2 --color_jitter_strength=0.5 \
  --model_dir="$OUT/pretrain"
show 'pretrain (linear eval on frozen features)' "$OUT/pretrain"

python3 run.py "${COMMON[@]}" --train_mode=finetune --checkpoint="$OUT/pretrain" \
  --label_fraction=0.1 --train_steps="$FINETUNE_STEPS" --learning_rate=0.1 \
  --warmup_epochs=0 --weight_decay=0 --ft_proj_selector=1 \
  --zero_init_logits_layer --model_dir="$OUT/finetune"
show 'finetune (10 % labels)' "$OUT/finetune"

python3 run.py "${COMMON[@]}" --train_mode=distill \
  --teacher_checkpoint="$OUT/finetune" --train_steps="$DISTILL_STEPS" \
  --learning_rate=1.0 --warmup_epochs=0.2 --weight_decay=1e-6 \
  --model_dir="$OUT/distill"
show 'distill (self-distillation, no labels)' "$OUT/distill"

echo "== exports: $OUT/distill/hub/proj_head_*  $OUT/distill/saved_model/*"
ls -d "$OUT"/distill/hub/proj_head_* "$OUT"/distill/saved_model/* 2>/dev/null || true
