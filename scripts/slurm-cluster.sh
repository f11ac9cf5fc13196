#!/usr/bin/env bash
# A real single-node SLURM cluster for tests: munge + slurmctld + slurmd started by hand (no systemd),
# two partitions (cpu, gpu) on this machine and fake GPUs (GRES backed by /dev/null clones).
#
#   scripts/slurm-cluster.sh install   # Debian: apt-get install slurm-wlm munge (root)
#   scripts/slurm-cluster.sh up        # start; prints the state folder
#   scripts/slurm-cluster.sh down      # cancel jobs, stop daemons, remove state
#
# State lives in $DFR_SLURM_DIR (default /tmp/dfr-slurm). Slurm's compiled-in config path
# /etc/slurm/slurm.conf is a symlink to the generated file (jobs started by the Snakemake jobstep plugin
# lose SLURM_CONF). No accounting daemon: job status comes from squeue, so MinJobAge is long.
set -euo pipefail
DIR=${DFR_SLURM_DIR:-/tmp/dfr-slurm}
GPUS=${DFR_SLURM_GPUS:-2}
HOST=$(hostname -s)

install() {
    command -v sbatch >/dev/null && command -v munged >/dev/null && return 0
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
}

up() {
    [ "$(id -u)" = 0 ] || { echo "slurm-cluster: must run as root" >&2; exit 1; }
    command -v slurmctld >/dev/null || { echo "slurm-cluster: slurm-wlm is not installed ($0 install)" >&2; exit 1; }
    down >/dev/null 2>&1 || true
    mkdir -p "$DIR"/{state,spool,log} /etc/slurm /run/munge /etc/munge /var/log/munge /var/lib/munge
    # munge: a key, the default socket path (Slurm 22.05 ignores other sockets for some connections)
    if [ ! -s /etc/munge/munge.key ]; then
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    fi
    chmod 400 /etc/munge/munge.key
    munged --force
    # fake GPUs: character devices that are clones of /dev/null (slurmd drops file-less GPUs)
    local files=""
    for i in $(seq 0 $((GPUS - 1))); do
        [ -e "$DIR/gpu$i" ] || mknod "$DIR/gpu$i" c 1 3
    done
    local cpus mem
    cpus=$(nproc)
    mem=$(( $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) - 1024 ))
    cat > "$DIR/gres.conf" <<GRES
AutoDetect=off
Name=gpu Type=fake File=$DIR/gpu[0-$((GPUS - 1))]
GRES
    cat > "$DIR/slurm.conf" <<CONF
ClusterName=dfrtest
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MinJobAge=600
DefMemPerCPU=1000
SchedulerParameters=sched_interval=1
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
GresTypes=gpu
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem Gres=gpu:fake:$GPUS State=UNKNOWN
PartitionName=cpu Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$HOST MaxTime=INFINITE State=UP
CONF
    cp "$DIR/gres.conf" /etc/slurm/gres.conf
    ln -sf "$DIR/slurm.conf" /etc/slurm/slurm.conf
    slurmctld -c
    slurmd -c
    for _ in $(seq 1 60); do
        if sinfo -h -o %T 2>/dev/null | grep -q idle; then
            echo "$DIR"
            return 0
        fi
        sleep 0.5
    done
    echo "slurm-cluster: node did not become idle; logs in $DIR/log" >&2
    sinfo >&2 || true
    tail -20 "$DIR"/log/*.log >&2 || true
    exit 1
}

down() {
    scancel --user root >/dev/null 2>&1 || true
    for d in slurmd slurmctld; do
        [ -f "$DIR/$d.pid" ] && kill "$(cat "$DIR/$d.pid")" 2>/dev/null || true
    done
    pkill -x slurmd 2>/dev/null || true
    pkill -x slurmctld 2>/dev/null || true
    pkill -x munged 2>/dev/null || true
    sleep 0.5
    [ "$(readlink /etc/slurm/slurm.conf 2>/dev/null)" = "$DIR/slurm.conf" ] && rm -f /etc/slurm/slurm.conf /etc/slurm/gres.conf
    rm -rf "$DIR"
}

case "${1:-}" in
    install) install ;;
    up) up ;;
    down) down ;;
    *) echo "usage: $0 install|up|down" >&2; exit 2 ;;
esac
