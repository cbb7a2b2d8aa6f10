#!/usr/bin/env bash
# Submit the whole SIMS loop (autoguide-sims) as SLURM jobs chained by dependencies:
#
#   base ──> synthesize 0 (job array) ──> retrain + register 0 ──> synthesize 1 (array) ──> ...
#
#   slurm/sims_chain.sh --out runs/sims-s --iterations 2 --synth-tasks 16 \
#       --retrain-sbatch "--gpus-per-node=8 --ntasks-per-node=8" --sbatch "--account=me" -- \
#       base_run=runs/img64-s 'budget_mi=[8,16]' 'retrain.overrides=["trainer=ddp"]'
#
# Every argument after -- is a Hydra override of conf/sims/sims.yaml (base or base_run and
# budget_mi are required); the script sets out_dir, iterations, stop_after, iteration,
# synthesize.task/num_tasks and retrain.launcher itself. All jobs run the same autoguide-sims
# command on the same --out folder, which makes every stage resumable: a requeued or rerun job
# skips the finished stages and continues the one it was in (finished shards, the fine-tune's
# checkpoints). Jobs:
#   base        post-hoc EMA reconstruction of the base (CPU; skipped when base=<file>)
#   synthesize  array task t of T writes the synthetic chunks k = t (mod T) of its iteration,
#               one GPU each (--synth-tasks T; T <= the number of chunks is useful)
#   retrain     finishes the synthetic set's manifest, fine-tunes on it under srun (one task per
#               GPU, as slurm/train.sbatch: trainer.devices/num_nodes from the allocation,
#               SIGUSR1 120 s before the time limit checkpoints and requeues), then registers
#               the negative models and pair.json files
# `afterok` dependencies wait through requeues; a failed job leaves its dependants pending
# (DependencyNeverSatisfied): fix the cause, then resubmit the chain with the same --out.
#
# Options:
#   --out DIR                 the SIMS folder (required)
#   --iterations N            SIMS rounds (default 1)
#   --synth-tasks T           array tasks per synthesize job (default 1)
#   --sbatch "OPTIONS"        sbatch options for every job (partition, account, qos)
#   --base-sbatch "OPTS", --synth-sbatch "OPTS", --retrain-sbatch "OPTS"   per job kind
#   --after JOBID             the first job waits for this one (e.g. the base model's training)
#   --dry-run                 print the sbatch commands, submit nothing
# OPTIONS are split at whitespace. Prints one line per job: "<role> <job id>".
# Inside a job the script runs itself as: sims_chain.sh --job base|synthesize|retrain ...
set -euo pipefail

# shellcheck source=slurm/common.sh
source "${AUTOGUIDE_ROOT:-${SLURM_SUBMIT_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}}/slurm/common.sh"

usage() { sed -n '2,/^set -euo/p' "$AUTOGUIDE_ROOT/slurm/sims_chain.sh" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
die() { echo "slurm/sims_chain.sh: $*" >&2; exit 2; }

job="" out="" iterations=1 iteration=0 tasks=1 after="" dry_run=0
sbatch_all="" sbatch_base="" sbatch_synth="" sbatch_retrain=""
while (($#)); do
    case $1 in
        --job) job=$2; shift ;;
        --out) out=$2; shift ;;
        --iterations) iterations=$2; shift ;;
        --iteration) iteration=$2; shift ;;
        --synth-tasks) tasks=$2; shift ;;
        --sbatch) sbatch_all=$2; shift ;;
        --base-sbatch) sbatch_base=$2; shift ;;
        --synth-sbatch) sbatch_synth=$2; shift ;;
        --retrain-sbatch) sbatch_retrain=$2; shift ;;
        --after) after=$2; shift ;;
        --dry-run) dry_run=1 ;;
        -h | --help) usage ;;
        --) shift; break ;;
        *) die "unknown option '$1' (see --help; Hydra overrides go after --)" ;;
    esac
    shift
done

[[ -n $out ]] || die "--out DIR is required"
[[ $iterations =~ ^[1-9][0-9]*$ ]] || die "--iterations $iterations: expected a positive integer"
[[ $tasks =~ ^[1-9][0-9]*$ ]] || die "--synth-tasks $tasks: expected a positive integer"
for key in out_dir iterations stop_after iteration synthesize.task synthesize.num_tasks retrain.launcher; do
    ag_refuse_override "$key" "slurm/sims_chain.sh sets it (see --help)" "$@"
done
out=$(realpath -m "$out")
sims=("$AUTOGUIDE_PYTHON" -m autoguide.apps.sims "out_dir=$out" "iterations=$iterations")

# ------------------------------------------------------------------ inside a job: run one stage
if [[ -n $job ]]; then
    case $job in
        base)
            ag_log "sims base: $*"
            exec "${sims[@]}" "$@" stop_after=base ;;
        synthesize)
            task=${SLURM_ARRAY_TASK_ID:-0}
            ag_log "sims synthesize, iteration $iteration, task $task of $tasks: $*"
            exec "${sims[@]}" "$@" stop_after=synthesize "iteration=$iteration" \
                "synthesize.task=$task" "synthesize.num_tasks=$tasks" ;;
        retrain)
            nodes=${SLURM_JOB_NUM_NODES:-1}
            ntasks=${SLURM_NTASKS:-1}
            ((ntasks % nodes == 0)) || die "$ntasks tasks on $nodes nodes: use --ntasks-per-node (one task per GPU)"
            # the fine-tune's trainer gets the allocation; appended to the user's retrain.overrides
            user=$(ag_override_value retrain.overrides "$@")
            items=${user#[}
            items=${items%]}
            overrides="[${items:+$items,}\"trainer.devices=$((ntasks / nodes))\",\"trainer.num_nodes=$nodes\"]"
            ag_log "sims retrain + register, iteration $iteration, $nodes node(s) x $((ntasks / nodes)) task(s): $*"
            exec "${sims[@]}" "$@" stop_after=register "iteration=$iteration" "retrain.overrides=$overrides" \
                'retrain.launcher=["srun","--kill-on-bad-exit=1"]' ;;
        *) die "--job $job: expected base, synthesize or retrain" ;;
    esac
fi

# ------------------------------------------------------------------------ submit the chain
(($# > 0)) || die "give the autoguide-sims overrides after -- (at least base=<file> or base_run=<run>, and budget_mi=...)"


((dry_run)) || mkdir -p "$out"
script=$AUTOGUIDE_ROOT/slurm/sims_chain.sh
common=(--out "$out" --iterations "$iterations" --synth-tasks "$tasks")
dependency=()
[[ -z $after ]] || dependency=(--dependency="afterok:$after")

# shellcheck disable=SC2086  # OPTIONS are split at whitespace on purpose
{
ag_submit base --job-name=sims-base --ntasks=1 --cpus-per-task=4 --time=02:00:00 \
    --output="$out/slurm-base-%j.out" "${dependency[@]}" $sbatch_all $sbatch_base \
    "$script" --job base "${common[@]}" -- "$@"
previous=$job_id
for ((k = 0; k < iterations; k++)); do
    ag_submit "synthesize-$k" --job-name="sims-synth-$k" --array="0-$((tasks - 1))" --ntasks=1 --cpus-per-task=4 \
        --gpus-per-node=1 --time=12:00:00 --requeue --output="$out/slurm-synth-$k-%A_%a.out" \
        --dependency="afterok:$previous" $sbatch_all $sbatch_synth \
        "$script" --job synthesize --iteration "$k" "${common[@]}" -- "$@"
    synth=$job_id
    ag_submit "retrain-$k" --job-name="sims-retrain-$k" --nodes=1 --ntasks-per-node=1 --gpus-per-node=1 \
        --cpus-per-task=8 --time=24:00:00 --signal=USR1@120 --requeue --open-mode=append \
        --output="$out/slurm-retrain-$k-%j.out" --dependency="afterok:$synth" $sbatch_all $sbatch_retrain \
        "$script" --job retrain --iteration "$k" "${common[@]}" -- "$@"
    previous=$job_id
done
}
