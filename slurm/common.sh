# shellcheck shell=bash
# Shared setup of every slurm/*.sbatch script and of slurm/chain.sh. Source it, don't run it:
#
#   source "${AUTOGUIDE_ROOT:-$SLURM_SUBMIT_DIR}/slurm/common.sh"
#
# (sbatch runs a copy of the batch script from its spool folder, so scripts find this file
# through AUTOGUIDE_ROOT or the folder `sbatch` was called from, never through $0.) The working
# folder stays the one sbatch was called from: relative paths in overrides mean the same as on
# the command line.
#
# Environment it reads (sbatch passes the submitting shell's environment on by default):
#   AUTOGUIDE_ROOT      the repository checkout; default: the submit folder, else this file's parent
#   AUTOGUIDE_ACTIVATE  a file sourced first, e.g. a venv's bin/activate or a `module load` script
#   AUTOGUIDE_PYTHON    the Python interpreter (default: python3 after activation)
# Environment it sets (each only if unset, so the caller's value wins):
#   WANDB_MODE=offline  compute nodes often have no network; `wandb sync <run>/logs/wandb/offline-run-*`
#                       uploads later. Set WANDB_MODE=online where nodes reach the wandb server.
#   HYDRA_FULL_ERROR=1  full Python tracebacks from the Hydra apps in the job logs
#   PYTHONUNBUFFERED=1  log lines reach slurm-*.out as they are printed
#   OMP_NUM_THREADS     the job's CPUs per task (SLURM_CPUS_PER_TASK), else 1
set -euo pipefail

if [[ -z ${AUTOGUIDE_ROOT:-} ]]; then
    if [[ -n ${SLURM_SUBMIT_DIR:-} && -f $SLURM_SUBMIT_DIR/slurm/common.sh ]]; then
        AUTOGUIDE_ROOT=$SLURM_SUBMIT_DIR
    else
        AUTOGUIDE_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    fi
fi
[[ -f $AUTOGUIDE_ROOT/slurm/common.sh ]] || {
    echo "slurm/common.sh: AUTOGUIDE_ROOT=$AUTOGUIDE_ROOT is not an autoguide checkout (no slurm/common.sh);" \
        "submit from the repository root or export AUTOGUIDE_ROOT" >&2
    exit 2
}
export AUTOGUIDE_ROOT

if [[ -n ${AUTOGUIDE_ACTIVATE:-} ]]; then
    [[ -f $AUTOGUIDE_ACTIVATE ]] || { echo "slurm/common.sh: AUTOGUIDE_ACTIVATE=$AUTOGUIDE_ACTIVATE: no such file" >&2; exit 2; }
    set +u  # activation scripts often read unset variables
    # shellcheck disable=SC1090
    source "$AUTOGUIDE_ACTIVATE"
    set -u
fi
AUTOGUIDE_PYTHON=${AUTOGUIDE_PYTHON:-python3}
export AUTOGUIDE_PYTHON

export WANDB_MODE=${WANDB_MODE:-offline}
export HYDRA_FULL_ERROR=${HYDRA_FULL_ERROR:-1}
export PYTHONUNBUFFERED=${PYTHONUNBUFFERED:-1}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}

# ag_log MESSAGE...: a time-stamped line naming the job, on stderr.
ag_log() {
    echo "[$(date '+%F %T')] [job ${SLURM_JOB_ID:-local}${SLURM_RESTART_COUNT:+ restart $SLURM_RESTART_COUNT}] $*" >&2
}

# ag_job_key: the name of this job that survives requeueing: "<array job>_<task>" inside a job
# array, else the job id. Run folders are keyed on it, never on a timestamp, so a requeued job
# finds the folder (checkpoints, snapshots, wandb run id) of its first start.
ag_job_key() {
    if [[ -n ${SLURM_ARRAY_JOB_ID:-} && -n ${SLURM_ARRAY_TASK_ID:-} ]]; then
        echo "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"
    elif [[ -n ${SLURM_JOB_ID:-} ]]; then
        echo "$SLURM_JOB_ID"
    else
        echo "slurm/common.sh: ag_job_key outside a SLURM job (no SLURM_JOB_ID)" >&2
        return 2
    fi
}

# ag_override_value KEY ARGS...: the value of the Hydra override KEY=... (also +KEY= and ++KEY=)
# among ARGS, empty when absent.
ag_override_value() {
    local key=$1 arg value=""
    shift
    for arg in "$@"; do
        case $arg in
            "$key="* | "+$key="* | "++$key="*) value=${arg#*=} ;;
        esac
    done
    echo "$value"
}

# ag_refuse_override KEY REASON ARGS...: exit with a message when ARGS set the Hydra key KEY
# (the script sets it itself).
ag_refuse_override() {
    local key=$1 reason=$2
    shift 2
    local arg
    for arg in "$@"; do
        case $arg in
            "$key="* | "+$key="* | "++$key="*)
                echo "$0: do not pass '$arg': $reason" >&2
                exit 2 ;;
        esac
    done
}

# ag_single_model DIR: the one *.safetensors file in DIR (what a one-std reconstruction wrote);
# an error naming DIR when there are none or several.
ag_single_model() {
    local dir=$1
    local files=()
    shopt -s nullglob
    files=("$dir"/*.safetensors)
    shopt -u nullglob
    if ((${#files[@]} != 1)); then
        echo "slurm/common.sh: expected exactly one .safetensors model in $dir, found ${#files[@]}" >&2
        return 2
    fi
    echo "${files[0]}"
}

# ag_train OVERRIDES...: run train.py under srun, one task per device (Lightning takes the ranks
# from SLURM). trainer.devices / trainer.num_nodes come from the job's layout; the run folder is
# keyed on the job (run_dir=<runs>/<name>-<job key>) unless OVERRIDES set run_dir, so a requeued
# job (same job id) continues its own run (resume=auto reads the newest checkpoint there).
# ag_submit ROLE SBATCH_ARGS...: submit one job, print "ROLE <id>", leave the id in $job_id;
# with dry_run=1 only print the sbatch command (the chain scripts' --dry-run). A job whose
# dependency fails is cancelled (--kill-on-invalid-dep), not left pending forever.
ag_submit() {
    local role=$1
    shift
    set -- --kill-on-invalid-dep=yes "$@"
    if ((${dry_run:-0})); then
        job_id="<$role>"
        echo "$role: sbatch $*"
    else
        job_id=$(sbatch --parsable "$@")
        job_id=${job_id%%;*}  # "id;cluster" on federated clusters
        echo "$role $job_id"
    fi
}

ag_train() {
    ag_refuse_override trainer.devices "the job's --ntasks-per-node sets it (one task per device)" "$@"
    ag_refuse_override trainer.num_nodes "the job's --nodes sets it" "$@"
    local nodes=${SLURM_JOB_NUM_NODES:-1}
    local tasks=${SLURM_NTASKS:-1}
    if ((tasks % nodes)); then
        echo "$0: $tasks tasks on $nodes nodes: use --ntasks-per-node (the same number of devices on every node)" >&2
        exit 2
    fi
    local per_node=$((tasks / nodes))
    local key
    key=$(ag_job_key)
    local run_dir=()
    [[ -n $(ag_override_value run_dir "$@") ]] || run_dir=("run_dir=\${paths.runs_dir}/\${name}-$key")
    ag_log "train: $nodes node(s) x $per_node task(s), restart ${SLURM_RESTART_COUNT:-0}: $*"
    srun --kill-on-bad-exit=1 "$AUTOGUIDE_PYTHON" "$AUTOGUIDE_ROOT/train.py" \
        "trainer.devices=$per_node" "trainer.num_nodes=$nodes" "${run_dir[@]}" "$@"
}
