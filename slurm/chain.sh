#!/usr/bin/env bash
# Submit a whole autoguidance pipeline as SLURM jobs chained by dependencies:
#
#   main training ─┬─> reconstruct main EMA ──┐
#   guide training ┴─> reconstruct guide EMA ─┴─> generation (job array over seed ranges)
#
#   slurm/chain.sh --out runs/ag-s --main experiment=img64-s --guide experiment=img64-xs-guide \
#       --main-std 0.050 --guide-std 0.100 --weight 2.1 --images 50000 \
#       --train-sbatch "--gpus-per-node=8 --ntasks-per-node=8" --sbatch "--account=me"
#
# "Guide = early snapshot of the main run": with --guide-fraction 1/16 no guide is trained; the
# guide is reconstructed from the main run's snapshots at 1/16 of its length (the nearest
# snapshot). Because the learning-rate schedule depends on the image count only, a run stopped
# at T/16 equals the first T/16 of the longer run, so this is the same-size guide trained T/16.
#
# Every run gets a fixed folder under --out (main/, guide/), so a requeued training job resumes
# where it stopped; `afterok` dependencies wait through requeues until a job really completed,
# and a failed job leaves its dependants pending with reason DependencyNeverSatisfied.
# The guide trains in parallel with the main run (it needs nothing from it); --serial makes
# it wait for the main run instead (for accounts that may run one training job at a time).
#
# Options:
#   --out DIR              folder of the whole pipeline (required): main/, guide/, models/, generated/
#   --main "OVERRIDES"     Hydra overrides of the main training run (required)
#   --guide "OVERRIDES"    Hydra overrides of the guide training run   } exactly one of
#   --guide-fraction F     reconstruct the guide from the main run at F } these two
#   --main-std S           EMA std of the main model (required)
#   --guide-std S          EMA std of the guide (required)
#   --weight W             guidance weight, Karras convention (required)
#   --images N             images to generate (default 50000), seeds 0 ... N-1
#   --images-per-task N    images per generation array task (default 1000)
#   --generate "OVERRIDES" more Hydra overrides for autoguide-generate (e.g. output.formats=[npz])
#   --sbatch "OPTIONS"     sbatch options for every job (partition, account, qos)
#   --train-sbatch "OPTS"  sbatch options for the training jobs (GPUs, tasks per node, nodes, time)
#   --reconstruct-sbatch "OPTS", --generate-sbatch "OPTS"   sbatch options for those jobs
#   --serial               the guide starts after the main run completed
#   --dry-run              print the sbatch commands, submit nothing
# OVERRIDES and OPTIONS are split at whitespace.
#
# Prints one line per job: "<role> <job id>" (with --dry-run: "<role>: sbatch ...").
set -euo pipefail

# shellcheck source=slurm/common.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/common.sh"

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
die() { echo "slurm/chain.sh: $*" >&2; exit 2; }

out="" main="" guide="" guide_fraction="" main_std="" guide_std="" weight=""
images=50000 per_task=1000 generate_args="" serial=0 dry_run=0
sbatch_all="" sbatch_train="" sbatch_reconstruct="" sbatch_generate=""
while (($#)); do
    case $1 in
        --out) out=$2; shift ;;
        --main) main=$2; shift ;;
        --guide) guide=$2; shift ;;
        --guide-fraction) guide_fraction=$2; shift ;;
        --main-std) main_std=$2; shift ;;
        --guide-std) guide_std=$2; shift ;;
        --weight) weight=$2; shift ;;
        --images) images=$2; shift ;;
        --images-per-task) per_task=$2; shift ;;
        --generate) generate_args=$2; shift ;;
        --sbatch) sbatch_all=$2; shift ;;
        --train-sbatch) sbatch_train=$2; shift ;;
        --reconstruct-sbatch) sbatch_reconstruct=$2; shift ;;
        --generate-sbatch) sbatch_generate=$2; shift ;;
        --serial) serial=1 ;;
        --dry-run) dry_run=1 ;;
        -h | --help) usage ;;
        *) die "unknown option '$1' (see --help)" ;;
    esac
    shift
done

[[ -n $out ]] || die "--out DIR is required"
[[ -n $main ]] || die "--main \"OVERRIDES\" is required (e.g. --main experiment=img64-s)"
[[ -n $main_std && -n $guide_std && -n $weight ]] || die "--main-std, --guide-std and --weight are required"
if [[ -n $guide && -n $guide_fraction ]] || [[ -z $guide && -z $guide_fraction ]]; then
    die "give exactly one of --guide \"OVERRIDES\" (train a guide) and --guide-fraction F (reconstruct it from the main run)"
fi
((serial == 0)) || [[ -n $guide ]] || die "--serial needs --guide (with --guide-fraction there is no guide training)"
[[ $images =~ ^[1-9][0-9]*$ ]] || die "--images $images: expected a positive integer"
[[ $per_task =~ ^[1-9][0-9]*$ ]] || die "--images-per-task $per_task: expected a positive integer"
for overrides in "$main" "$guide"; do
    for word in $overrides; do
        case $word in run_dir=* | +run_dir=* | ++run_dir=*) die "do not set run_dir in --main/--guide: the chain places the runs in --out" ;; esac
    done
done
out=$(realpath -m "$out")
tasks=$(((images + per_task - 1) / per_task))


mkdir_unless_dry() { ((dry_run)) || mkdir -p "$@"; }
mkdir_unless_dry "$out"

# sbatch options: the chain's own first, then --sbatch, then the per-kind options (the last
# occurrence of an option wins, so the user's choices override the chain's defaults).
scripts=$AUTOGUIDE_ROOT/slurm
# shellcheck disable=SC2086  # OPTIONS and OVERRIDES are split at whitespace on purpose
{
ag_submit main --job-name=ag-main --output="$out/slurm-main-%j.out" $sbatch_all $sbatch_train \
    "$scripts/train.sbatch" $main run_dir="$out/main"
main_id=$job_id

if [[ -n $guide ]]; then
    after_main=()
    ((serial)) && after_main=(--dependency="afterok:$main_id")
    ag_submit guide "${after_main[@]}" --job-name=ag-guide --output="$out/slurm-guide-%j.out" \
        $sbatch_all $sbatch_train "$scripts/train.sbatch" $guide run_dir="$out/guide"
    guide_id=$job_id
    guide_phema=$out/guide/phema
    guide_when=()
else
    guide_id=$main_id
    guide_phema=$out/main/phema
    guide_when=(--at-fraction "$guide_fraction")
fi

ag_submit reconstruct-main --dependency="afterok:$main_id" --job-name=ag-reconstruct-main \
    --output="$out/slurm-reconstruct-main-%j.out" $sbatch_all $sbatch_reconstruct \
    "$scripts/reconstruct.sbatch" "$out/main/phema" --std "$main_std" --out-dir "$out/models/main"
recon_main_id=$job_id
ag_submit reconstruct-guide --dependency="afterok:$guide_id" --job-name=ag-reconstruct-guide \
    --output="$out/slurm-reconstruct-guide-%j.out" $sbatch_all $sbatch_reconstruct \
    "$scripts/reconstruct.sbatch" "$guide_phema" --std "$guide_std" "${guide_when[@]}" --out-dir "$out/models/guide"
recon_guide_id=$job_id

ag_submit generate --dependency="afterok:$recon_main_id:$recon_guide_id" --array="0-$((tasks - 1))" \
    --export="ALL,OUT_DIR=$out/generated,SEED_START=0,SEEDS_PER_TASK=$per_task,SEED_COUNT=$images" \
    --job-name=ag-generate --output="$out/slurm-generate-%A_%a.out" $sbatch_all $sbatch_generate \
    "$scripts/generate.sbatch" model="$out/models/main" guide="$out/models/guide" \
    guidance=autoguidance guidance.weight="$weight" $generate_args
}
