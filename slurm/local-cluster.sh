#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for tests and CI (not for production).
#
#   slurm/local-cluster.sh start    # write slurm.conf, start munged, slurmctld, slurmd; wait until ready
#   slurm/local-cluster.sh stop     # stop the three daemons
#   slurm/local-cluster.sh status   # daemons and the node's state (exit status 1 if one is down)
#   slurm/local-cluster.sh restart
#
# start and stop are idempotent: start (re)writes slurm.conf, starts only the daemons that are
# down and, when the config changed under running daemons, applies it with `scontrol reconfigure`
# (running jobs survive); stop does nothing when nothing runs.
#
# Needs root and the Debian/Ubuntu packages `slurm-wlm` and `munge`
# (apt-get update && apt-get install -y slurm-wlm munge). No systemd: the daemons run in the
# background with pid files under the state folder.
#
# Environment:
#   LOCAL_SLURM_DIR          state, spool, logs and pid files (default /var/lib/autoguide-slurm)
#   LOCAL_SLURM_CPUS         CPUs of the node (default: nproc)
#   LOCAL_SLURM_MEM_MB       memory of the node in MB (default: 85% of MemTotal, at most 20000)
#   LOCAL_SLURM_CRED_EXPIRE  seconds before a requeued job may start again, minus one (default 10;
#                            Slurm's own default is 120)
#   SLURM_CONF               where slurm.conf goes (default /etc/slurm/slurm.conf, which the
#                            client commands read without any environment)
#
# The cluster: one node named after this host, partition `debug` (default, no time cap),
# select/cons_tres with CR_Core_Memory (DefMemPerCPU = memory / CPUs, so jobs without --mem share
# the node), proctrack/linuxproc and task/none (no cgroup plugins: it also runs in containers and
# VMs without cgroup delegation), no accounting database (sacct does not work; finished jobs stay
# visible to `scontrol show job` for MinJobAge = 600 s), JobRequeue=1 (batch jobs are requeueable
# unless submitted with --no-requeue).
set -euo pipefail

STATE_DIR=${LOCAL_SLURM_DIR:-/var/lib/autoguide-slurm}
CONF=${SLURM_CONF:-/etc/slurm/slurm.conf}
HOST=$(hostname -s)
PARTITION=debug
CRED_EXPIRE=${LOCAL_SLURM_CRED_EXPIRE:-10}
MUNGE_SOCKET=/run/munge/munge.socket.2
MUNGE_PID=/run/munge/munged.pid

die() { echo "local-cluster.sh: $*" >&2; exit 1; }

require_tools() {
    [[ $(id -u) -eq 0 ]] || die "must run as root (it starts munged, slurmctld and slurmd)"
    local tool
    for tool in munged slurmctld slurmd sinfo scontrol; do
        command -v "$tool" >/dev/null || [[ -x /usr/sbin/$tool ]] \
            || die "'$tool' not found; install with: apt-get update && apt-get install -y slurm-wlm munge"
    done
}

default_mem_mb() {
    local total_kb mb
    total_kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)
    mb=$((total_kb * 85 / 100 / 1024))
    ((mb > 20000)) && mb=20000
    echo "$mb"
}

# render_conf: the slurm.conf this script wants, on stdout.
render_conf() {
    local cpus=${LOCAL_SLURM_CPUS:-$(nproc)}
    local mem=${LOCAL_SLURM_MEM_MB:-$(default_mem_mb)}
    cat <<EOF
# Written by autoguide slurm/local-cluster.sh: a one-node test cluster on $HOST.
ClusterName=autoguide-local
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=$CRED_EXPIRE
StateSaveLocation=$STATE_DIR/state
SlurmdSpoolDir=$STATE_DIR/spool
SlurmctldPidFile=$STATE_DIR/slurmctld.pid
SlurmdPidFile=$STATE_DIR/slurmd.pid
SlurmctldLogFile=$STATE_DIR/log/slurmctld.log
SlurmdLogFile=$STATE_DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$((mem / cpus))
ReturnToService=2
JobRequeue=1
MinJobAge=600
KillWait=30
SlurmctldTimeout=60
SlurmdTimeout=60
InactiveLimit=0
NodeName=$HOST CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
}

# write_conf: install the wanted slurm.conf atomically; status 0 if it changed, 1 if it was current.
write_conf() {
    mkdir -p "$(dirname "$CONF")" "$STATE_DIR"/{state,spool,log}
    local tmp
    tmp=$(mktemp "$(dirname "$CONF")/.slurm.conf.XXXXXX")
    render_conf >"$tmp"
    if [[ -f $CONF ]] && cmp -s "$tmp" "$CONF"; then
        rm -f "$tmp"
        return 1
    fi
    chmod 644 "$tmp"
    mv -f "$tmp" "$CONF"
}

pid_alive() {  # pid_alive PIDFILE
    [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

munge_alive() {
    [[ -S $MUNGE_SOCKET ]] && munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1
}

start_munge() {
    munge_alive && return
    if [[ ! -s /etc/munge/munge.key ]]; then
        if command -v mungekey >/dev/null; then
            mungekey --create --force
        else
            dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
        fi
    fi
    mkdir -p /run/munge /var/lib/munge /var/log/munge
    if id munge >/dev/null 2>&1; then
        chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
        chmod 400 /etc/munge/munge.key
        su -s /bin/sh munge -c "/usr/sbin/munged --pid-file=$MUNGE_PID"
    else
        chmod 400 /etc/munge/munge.key
        /usr/sbin/munged --force --pid-file="$MUNGE_PID"
    fi
    local _
    for _ in $(seq 50); do munge_alive && return; sleep 0.1; done
    die "munged did not come up (see /var/log/munge/munged.log)"
}

wait_ready() {
    local state="" _
    for _ in $(seq 60); do
        state=$(sinfo -h -n "$HOST" -o '%T' 2>/dev/null | head -n1 || true)
        case $state in
            idle | mixed | allocated | completing) return ;;
            down* | drain* | fail*) scontrol update NodeName="$HOST" State=RESUME 2>/dev/null || true ;;
        esac
        sleep 1
    done
    die "node $HOST not ready after 60 s (state '${state:-unknown}'); see $STATE_DIR/log/"
}

start() {
    require_tools
    local changed=0 running=1
    write_conf && changed=1
    start_munge
    pid_alive "$STATE_DIR/slurmctld.pid" || { /usr/sbin/slurmctld -f "$CONF"; running=0; }
    pid_alive "$STATE_DIR/slurmd.pid" || { /usr/sbin/slurmd -f "$CONF"; running=0; }
    if ((changed && running)); then
        scontrol reconfigure  # running daemons (and their jobs) pick up the new slurm.conf
    fi
    wait_ready
    echo "local SLURM cluster up: node $HOST, partition $PARTITION, conf $CONF, logs $STATE_DIR/log"
}

stop_daemon() {  # stop_daemon NAME PIDFILE
    local pidfile=$2 pid _
    pid_alive "$pidfile" || { rm -f "$pidfile"; return 0; }
    pid=$(cat "$pidfile")
    kill "$pid"
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; return 0; }
        sleep 0.1
    done
    die "$1 (pid $pid) did not stop within 10 s"
}

stop() {
    stop_daemon slurmd "$STATE_DIR/slurmd.pid"
    stop_daemon slurmctld "$STATE_DIR/slurmctld.pid"
    stop_daemon munged "$MUNGE_PID"
    echo "local SLURM cluster stopped"
}

status() {
    local name down=0
    for name in slurmctld slurmd; do
        if pid_alive "$STATE_DIR/$name.pid"; then
            echo "$name: running (pid $(cat "$STATE_DIR/$name.pid"))"
        else
            echo "$name: stopped"
            down=1
        fi
    done
    if munge_alive; then echo "munged: running"; else echo "munged: stopped"; down=1; fi
    if ((down == 0)); then sinfo -N -l; fi
    return "$down"
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    status) status ;;
    restart) stop; start ;;
    *) echo "usage: $0 start|stop|status|restart" >&2; exit 2 ;;
esac
