#!/usr/bin/env bash
# Start (or stop) a real one-node SLURM cluster on this machine: partitions "cpu" (default) and
# "gpu", with a "gpu" gres (File=/dev/null: a placeholder device, so the gres is schedulable on a
# machine without one). Debian packages: slurmctld slurmd slurm-client munge. Needs root.
# Usage: scripts/slurm_local.sh start | stop
set -euo pipefail
action=${1:-start}
host=$(hostname -s)
conf=/etc/slurm

if [ "$action" = stop ]; then
    scancel --user=root 2>/dev/null || true
    pkill -KILL -x slurmd 2>/dev/null || true
    pkill -KILL -x slurmctld 2>/dev/null || true
    pkill -x munged 2>/dev/null || true
    for _ in $(seq 50); do pgrep -x munged >/dev/null || pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null || break; sleep 0.2; done
    rm -rf /var/spool/slurmctld/* /var/spool/slurmd/*   # the next start begins with no job records
    exit 0
fi

if ! command -v slurmctld >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
fi
mkdir -p "$conf" /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge
cat > "$conf/slurm.conf" <<CONF
ClusterName=unireg-ci
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ReturnToService=2
# keep finished jobs visible to squeue for an hour: the workflow polls job states with squeue and CI
# reads the records of every job at the end of a run
MinJobAge=3600
NodeName=$host CPUs=$(nproc) RealMemory=16000 Gres=gpu:1 State=UNKNOWN
PartitionName=cpu Nodes=$host Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$host MaxTime=INFINITE State=UP
CONF
# a Count-only gres line leaves the node INVAL ("gres/gpu count reported lower than configured")
echo "NodeName=$host Name=gpu File=/dev/null" > "$conf/gres.conf"
[ -s /etc/munge/munge.key ] || mungekey -c
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
pgrep -x munged >/dev/null || su -s /bin/sh munge -c /usr/sbin/munged
for _ in $(seq 50); do [ -S /run/munge/munge.socket.2 ] && break; sleep 0.2; done
pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd
for _ in $(seq 30); do
    sinfo -h >/dev/null 2>&1 && break
    sleep 1
done
scontrol update nodename="$host" state=resume 2>/dev/null || true
sinfo
