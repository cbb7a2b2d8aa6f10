#!/usr/bin/env bash
# MNIST-5k guidance comparison: one command regenerates every number and picture of
# benchmarks/results/mnist/{results.md,results.json,grids.png}.
#
#   benchmarks/results/mnist/run.sh            # from the repository root (or anywhere)
#
# Stages (each skipped when its output exists, so rerunning resumes; delete runs/ to redo):
#   1. train the MNIST feature classifier (FD / precision / recall features)
#   2. train the main model mnist-s-cfg (mnist-s + label dropout 0.1: the default recipe, 33.6 k
#      images) and the autoguidance guide mnist-xs-guide-cfg (XS, trained to T/2 with snapshots
#      every 512 images, so that it is read post hoc at T/8, T/4 and T/2), then the same guide
#      continued to T in its own folder mnist-xs-guide-cfg-full (a guide with less capacity only)
#   3. one sweep per guidance method with autoguide-sweep (FD-selected), on the same seeds,
#      random class per seed, the same sampler; unguided = the w = 1 point. Autoguidance has
#      four sweeps: the XS guide at T/8, T/4, T/2; the main run itself read at T/8 and T/4 (an
#      S-size guide with less training); the XS guide with a longer EMA; the T/2 XS guide at
#      larger weights
#   4. SIMS: autoguide-sims (synthetic set, fine-tune, negative, weight-space models) +
#      python -m autoguide.apps.sims_compare
#   5. heldout.py: every method's pick re-measured on disjoint seeds 1000-1999
#   6. the target check with less selection noise: unguided, CFG and autoguidance swept again
#      with 1,000 images per setting on seeds 2000-2999 (refine-*): around each pick of stage 3
#      (weights, main EMA, guidance interval) and, for autoguidance, the other guides (XS at T,
#      T/2, T/4, T/8; S at T/4; guide EMA 0.05 / 0.1 / 0.15); each pick re-measured on the
#      held-out seeds (heldout-refine-*)
#   7. a variant: the main model trained twice as long (mnist-s-cfg-2x), with unguided, CFG and
#      autoguidance compared as in stage 6 (variant-main2x-*, heldout-variant-main2x-*)
#   8. the final measurement: the picks of stages 6 and 7 (unguided, CFG, autoguidance) once more on
#      5,000 new seeds (3000-7999), with FD and FD_inf (FD extrapolated to infinitely many images,
#      Chong & Forsyth 2020): 1,000-image FDs carry a bias of a quarter to a third of their value
#   9. report.py: results.md, results.json and grids.png (same seeds and classes per panel)
# results.md is rewritten after every sweep, so the table grows as the stages finish.
#
# Sizes are environment variables; the defaults are the ones the committed table used
# (sized for a shared 2-core CPU). MAIN_FRACTION=1 trains the full mnist-s recipe.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$HERE/../../.."                       # repository root: conf/ and train.py live here
R="benchmarks/results/mnist/runs"
mkdir -p "$R/logs"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"   # one thread per process: the CPU is shared

MAIN_FRACTION="${MAIN_FRACTION:-1.0}"     # main run length as a fraction of the mnist-s recipe
GUIDE_FRACTION="$(python -c "print($MAIN_FRACTION / 2)")"   # guide run: to T/2, read at T/8, T/4, T/2
NUM_IMAGES="${NUM_IMAGES:-250}"           # images per evaluated setting (seeds 0..N-1)
STEPS="${STEPS:-8}"                      # EDM Heun sampler steps (2 N - 1 network evaluations)
MAIN_STD="${MAIN_STD:-0.10}"              # post-hoc EMA std of the main model (every row)
HELDOUT_SEEDS="${HELDOUT_SEEDS:-1000-1999}" # re-measurement of every pick (disjoint from the sweeps)
REFINE_SEEDS="${REFINE_SEEDS:-2000-2999}"   # stage 6 selection seeds (disjoint from both)
FINAL_SEEDS="${FINAL_SEEDS:-3000-7999}"     # stage 8: the picks measured with 5,000 images (disjoint from all)
FD_INFINITY="${FD_INFINITY:-15 0.2}"        # stage 8: FD_inf from 15 subset sizes, 20%..100% of the images
SIMS_BUDGET_MI="${SIMS_BUDGET_MI:-0.00390625}"   # 4096 images of fine-tuning
SIMS_IMAGES="${SIMS_IMAGES:-1000}"       # synthetic set size
SIMS_OMEGAS="${SIMS_OMEGAS:-[0.5,1.0,1.5,2.0]}"
SIMS_WEIGHT_SPACE="${SIMS_WEIGHT_SPACE:-[0.5,1.0]}"
SKIP_SIMS="${SKIP_SIMS:-0}"
GRID_SEEDS="${GRID_SEEDS:-2}"                 # seeds per class in each grids.png panel
CFG_WEIGHTS="${CFG_WEIGHTS:-[1.25,1.5,2.0,2.5]}"
AG_WEIGHTS="${AG_WEIGHTS:-[1.5,2.0]}"
AG_LONG_EMA_WEIGHTS="${AG_LONG_EMA_WEIGHTS:-[2.0,2.5]}"
AG_T2_WEIGHTS="${AG_T2_WEIGHTS:-[2.5,3.0]}"           # the T/2 guide's FD still fell from w 1.5 to 2
PERTURB_WEIGHTS="${PERTURB_WEIGHTS:-[1.5,2.5]}"     # PAG, SEG, ICG, TSG

CLASSIFIER="$R/mnist-classifier.safetensors"
SAMPLING=(
  class_labels=random "sampler.num_steps=$STEPS" batch_size=250
  device=cpu progress=false "cache_dir=$R/cache" "extractors.mnist.path=$CLASSIFIER" metrics=mnist
)
COMMON=("seeds=0-$((NUM_IMAGES - 1))" "${SAMPLING[@]}")   # SIMS compare: the sweeps' seeds
TRAIN=(logger=csv "paths.runs_dir=$R" train.checkpoint_kimg=2 '~callbacks.sample_grid')

timed() {  # timed <name> <command...>: run, log to runs/logs/<name>.log, record wall seconds
  local name="$1"; shift
  local start=$SECONDS
  echo "[$(date +%T)] $name: $*"
  "$@" >"$R/logs/$name.log" 2>&1 || { echo "$name failed; see $R/logs/$name.log" >&2; tail -20 "$R/logs/$name.log" >&2; return 1; }
  echo "$name $((SECONDS - start))" >>"$R/logs/wall_seconds.txt"
  echo "[$(date +%T)] $name done in $((SECONDS - start)) s"
}

report() { python benchmarks/results/mnist/report.py --runs "$R" --grids "${1:-0}" --grid-seeds "$GRID_SEEDS" >/dev/null || echo "report.py failed" >&2; }

# 1. feature classifier
[ -f "$CLASSIFIER" ] || timed classifier autoguide-mnist-classifier train --out "$CLASSIFIER" --device cpu

# 2. main model and guide, side by side (train.py resumes from the newest checkpoint by itself)
train_main() {
  [ -f "$R/mnist-s-cfg/final.safetensors" ] || timed train-main python train.py experiment=mnist-s-cfg "${TRAIN[@]}" \
    "train.duration_fraction=$MAIN_FRACTION" train.snapshot_kimg=2
}
train_guide() {
  [ -f "$R/mnist-xs-guide-cfg/final.safetensors" ] || timed train-guide python train.py experiment=mnist-xs-guide-cfg "${TRAIN[@]}" \
    "train.duration_fraction=$GUIDE_FRACTION" train.snapshot_kimg=0.5
}
continue_run() {  # continue_run <from run> <to run> <fraction> <overrides...>: <from run>'s snapshots and newest
  # checkpoint copied into its own folder <to run> and trained on to <fraction> of the recipe
  local src="$R/$1" dst="$R/$2" fraction="$3"; shift 3
  [ -f "$dst/final.safetensors" ] && return 0
  if [ ! -d "$dst" ]; then
    rm -rf "$dst.partial" && mkdir -p "$dst.partial/checkpoints" && cp -r "$src/phema" "$dst.partial/" \
      && cp "$(ls "$src"/checkpoints/nimg-*.ckpt | tail -1)" "$dst.partial/checkpoints/" && mv "$dst.partial" "$dst"
  fi
  timed "train-$2" python train.py "name=$2" "${TRAIN[@]}" "train.duration_fraction=$fraction" "$@"
}
# the same XS guide continued from T/2 to T (less capacity, the main's training time)
train_guide_full() { continue_run mnist-xs-guide-cfg mnist-xs-guide-cfg-full "$MAIN_FRACTION" experiment=mnist-xs-guide-cfg train.snapshot_kimg=0.5; }
train_main & main_pid=$!
train_guide
train_guide_full
wait "$main_pid"

# 3. sweeps: sweep <name> <overrides...>; the table is rewritten after each one
run_sweep() {  # run_sweep <stage: sweep|refine> <name> <seeds=...> <overrides...>, unless finished
  local stage="$1" name="$2" seeds="$3"; shift 3
  [ -f "$R/$stage-$name/best.json" ] || timed "$stage-$name" python -m autoguide.apps.sweep "main.run=$R/mnist-s-cfg" \
    "grid.main_std=[$MAIN_STD]" "output.dir=$R/$stage-$name" "$seeds" "${SAMPLING[@]}" "$@"
}
sweep() {
  local name="$1"; shift
  run_sweep sweep "$name" "seeds=0-$((NUM_IMAGES - 1))" "$@"
  report
}
lane_a() {  # unguided and CFG first: the rows the target is measured against
  sweep unguided guidance=cfg 'grid.weight=[1.0]' "grid.main_std=[0.05,$MAIN_STD]"
  sweep cfg guidance=cfg "grid.weight=$CFG_WEIGHTS"
  sweep pag guidance=pag "grid.weight=$PERTURB_WEIGHTS"
  sweep seg guidance=seg "grid.weight=$PERTURB_WEIGHTS"
}
lane_b() {  # autoguidance: guide size x guide time x guide EMA
  sweep autoguidance-xs guidance=autoguidance "guides.runs=[$R/mnist-xs-guide-cfg]" 'guides.times=[0.25,0.5,null]' \
    'grid.guide_std=[0.05]' "grid.weight=$AG_WEIGHTS"
  sweep autoguidance-s guidance=autoguidance "guides.runs=[$R/mnist-s-cfg]" 'guides.times=[0.125,0.25]' \
    'grid.guide_std=[0.05]' "grid.weight=$AG_WEIGHTS"
  sweep autoguidance-xs-ema guidance=autoguidance "guides.runs=[$R/mnist-xs-guide-cfg]" 'guides.times=[0.5,null]' \
    'grid.guide_std=[0.1]' "grid.weight=$AG_LONG_EMA_WEIGHTS"
  sweep autoguidance-xs-t2 guidance=autoguidance "guides.runs=[$R/mnist-xs-guide-cfg]" 'guides.times=[null]' \
    'grid.guide_std=[0.05]' "grid.weight=$AG_T2_WEIGHTS"
  sweep tsg guidance=tsg "grid.weight=$PERTURB_WEIGHTS"
}
lane_sims() {  # 4. SIMS; its base is the same post-hoc EMA of the main run as every other row
  [ "$SKIP_SIMS" = 1 ] && return 0
  [ -f "$R/sims/summary.json" ] || timed sims python -m autoguide.apps.sims "out_dir=$R/sims" "base_run=$R/mnist-s-cfg" \
    "base_ema_std=$MAIN_STD" "budget_mi=[$SIMS_BUDGET_MI]" "synthesize.num_images=$SIMS_IMAGES" \
    "synthesize.sampler.num_steps=$STEPS" "register.ema_stds=[$MAIN_STD]" "register.weight_space=$SIMS_WEIGHT_SPACE" device=cpu
  [ -f "$R/sims/compare/compare.json" ] || timed sims-compare python -m autoguide.apps.sims_compare "sims_dir=$R/sims" \
    "omega=$SIMS_OMEGAS" "${COMMON[@]}" "output.dir=$R/sims/compare"
  report
}
lane_c() {
  lane_sims
  sweep icg guidance=icg "grid.weight=$PERTURB_WEIGHTS"
}
lane_a & a_pid=$!
lane_b & b_pid=$!
lane_c & c_pid=$!
status=0
for pid in "$a_pid" "$b_pid" "$c_pid"; do wait "$pid" || status=1; done

# 5. held-out re-measurement of every pick
[ "$status" = 0 ] || exit "$status"
# (each evaluation's time is in its own report, runs/heldout-<method>/metrics.json)
python benchmarks/results/mnist/heldout.py --runs "$R" --seeds "$HELDOUT_SEEDS" >>"$R/logs/heldout.log" 2>&1 \
  || { echo "heldout.py failed; see $R/logs/heldout.log" >&2; exit 1; }

# 6. the target's methods again, 1,000 images per setting (selection noise of 250-image FDs
#    reordered the methods), picks re-measured on the held-out seeds
refine() {
  local name="$1"; shift
  run_sweep refine "$name" "seeds=$REFINE_SEEDS" "$@"
}
ag() {  # ag <refine|variant> <name> <guide run> <guide time> <guide EMA std> <weights> [overrides...]
  local stage="$1" name="$2" guide="$3" time="$4" std="$5" weights="$6"; shift 6
  "$stage" "$name" guidance=autoguidance "guides.runs=[$R/$guide]" "guides.times=[$time]" "grid.guide_std=[$std]" \
    "grid.weight=$weights" "$@"
}
refine_lane_a() {
  refine unguided guidance=cfg 'grid.weight=[1.0]'
  refine cfg guidance=cfg "grid.weight=${REFINE_CFG_WEIGHTS:-[1.25,1.5]}"
  # the same search around each method's pick: main EMA, finer weights, a guidance interval
  # ((0.28, 5.42], the guidance-interval paper's EDM2 range) for CFG and autoguidance alike
  refine unguided-std15 guidance=cfg 'grid.weight=[1.0]' 'grid.main_std=[0.15]'
  refine cfg-fine guidance=cfg 'grid.weight=[1.125,1.375]'
  refine cfg-interval guidance=cfg 'grid.weight=[1.5,2.0]' 'grid.interval=[[0.28,5.42]]'
  ag refine autoguidance-xs-interval mnist-xs-guide-cfg null 0.1 '[2.0,2.5]' 'grid.interval=[[0.28,5.42]]'
}
refine_lane_b() {
  ag refine autoguidance-xs mnist-xs-guide-cfg null 0.1 "${REFINE_AG_WEIGHTS:-[1.5,2.0,2.5]}"
  # FD still fell from w 2 to 1.5 above: the same guide at w 1.25 and 1.75, and with the shorter EMA at w 1.5
  ag refine autoguidance-xs-low mnist-xs-guide-cfg null 0.1 '[1.25]'
  ag refine autoguidance-xs-mid mnist-xs-guide-cfg null 0.1 '[1.75]'
  ag refine autoguidance-xs-ema05 mnist-xs-guide-cfg null 0.05 '[1.5]'
  # other guides: the XS guide at T (capacity only), T/4 and T/8; the main run at T/4 (training only);
  # a longer guide EMA; a longer main EMA
  ag refine autoguidance-xs-full mnist-xs-guide-cfg-full null 0.1 '[1.5,2.0]'
  ag refine autoguidance-xs-t4 mnist-xs-guide-cfg 0.5 0.1 '[1.5]'
  ag refine autoguidance-xs-t8 mnist-xs-guide-cfg 0.25 0.1 '[1.25,1.5]'
  ag refine autoguidance-s-t4 mnist-s-cfg 0.25 0.1 '[1.5]'
  ag refine autoguidance-xs-gstd15 mnist-xs-guide-cfg null 0.15 '[1.5,2.0]'
  ag refine autoguidance-xs-t8-gstd15 mnist-xs-guide-cfg 0.25 0.15 '[1.25]'
  ag refine autoguidance-xs-std15 mnist-xs-guide-cfg null 0.1 '[1.5]' 'grid.main_std=[0.15]'
}
refine_lane_a & refine_a_pid=$!
refine_lane_b || status=1
wait "$refine_a_pid" || status=1
[ "$status" = 0 ] || exit "$status"
python benchmarks/results/mnist/heldout.py --runs "$R" --seeds "$HELDOUT_SEEDS" --prefix refine >>"$R/logs/heldout.log" 2>&1 \
  || { echo "heldout.py --prefix refine failed; see $R/logs/heldout.log" >&2; exit 1; }

# 7. variant: the main model trained twice as long (the main run continued from T to 2T), the
#    target's three methods on stage 6's seeds; the guides: the XS guide at T/2 and T, the 1x main
continue_run mnist-s-cfg mnist-s-cfg-2x "$(python -c "print(2 * $MAIN_FRACTION)")" experiment=mnist-s-cfg train.snapshot_kimg=2
variant() {
  local name="$1"; shift
  run_sweep variant-main2x "$name" "seeds=$REFINE_SEEDS" "main.run=$R/mnist-s-cfg-2x" "$@"
}
variant_lane_a() {
  variant unguided guidance=cfg 'grid.weight=[1.0]'
  variant cfg guidance=cfg 'grid.weight=[1.25,1.5]'
  variant cfg-fine guidance=cfg 'grid.weight=[1.125]'                 # FD rose from 1.25 to 1.5
  ag variant autoguidance-s mnist-s-cfg null 0.1 '[1.5]'
}
variant_lane_b() {
  ag variant autoguidance-xs mnist-xs-guide-cfg null 0.1 '[1.5,2.0]'
  ag variant autoguidance-xs-full mnist-xs-guide-cfg-full null 0.1 '[1.5,2.0]'
  ag variant autoguidance-xs-low mnist-xs-guide-cfg null 0.1 '[1.25]'   # FD rose from 1.5 to 2
}
variant_lane_a & variant_a_pid=$!
variant_lane_b || status=1
wait "$variant_a_pid" || status=1
[ "$status" = 0 ] || exit "$status"
python benchmarks/results/mnist/heldout.py --runs "$R" --seeds "$HELDOUT_SEEDS" --prefix variant-main2x >>"$R/logs/heldout.log" 2>&1 \
  || { echo "heldout.py --prefix variant-main2x failed; see $R/logs/heldout.log" >&2; exit 1; }

# 8. final measurement of the target's picks with 5,000 images, FD and FD_inf (unguided, CFG and
#    autoguidance with each main model: about 1.5 h per lane on one thread; the other methods'
#    picks would take as long again, so they keep their 1,000-image held-out FDs)
final() {  # final <stage>
  # shellcheck disable=SC2086  # FD_INFINITY is two words
  python benchmarks/results/mnist/heldout.py --runs "$R" --seeds "$FINAL_SEEDS" --prefix "$1" --family final \
    --fd-infinity $FD_INFINITY --methods unguided autoguidance cfg >>"$R/logs/final-$1.log" 2>&1 \
    || { echo "heldout.py --family final --prefix $1 failed; see $R/logs/final-$1.log" >&2; return 1; }
}
final refine & final_pid=$!
final variant-main2x || status=1
wait "$final_pid" || status=1
[ "$status" = 0 ] || exit "$status"

# 9. final tables and the image grids
report 1
