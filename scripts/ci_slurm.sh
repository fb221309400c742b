#!/usr/bin/env bash
# The workflow on a real one-node SLURM cluster, as CI runs it (needs root and Debian's slurm
# packages, which scripts/slurm_local.sh installs):
#   1. start the cluster (partitions cpu and gpu, a gpu gres);
#   2. build the 2-subject low-res demo cohort plus one subject whose image is corrupt;
#   3. run `snakemake --profile profiles/slurm` over it with register.gpu: true, software
#      deployment overridden to this environment (conda channels are unreachable here) and
#      register.device: cpu (the CI node's GPU is a placeholder: the job is given a GPU by SLURM,
#      CUDA_VISIBLE_DEVICES is set, but there is no device behind it);
#   4. check the run with scripts/check_slurm_run.py: every job went through SLURM, register ran
#      in the gpu partition with a GPU allocated, the corrupt subject was reported failed within a
#      minute, the good subjects' outputs are complete and correct;
#   5. tear the cluster down (also on failure).
# Usage: scripts/ci_slurm.sh [workdir]   (default: a fresh temporary folder)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-$(mktemp -d /tmp/unireg-slurm.XXXXXX)}
export PATH="$repo/.venv/bin:$PATH"
export PYTHONUNBUFFERED=1   # snakemake's messages reach the timestamped log as they happen

bash "$repo/scripts/slurm_local.sh" start
trap 'bash "$repo/scripts/slurm_local.sh" stop' EXIT

mkdir -p "$work"
cd "$work"
PYTHONPATH="$repo" python -m unireg demo --out demo --subjects 2 --low-res --seed 0
# a third subject whose image is corrupt: it must fail alone, and be reported
head -c 4000 /dev/urandom > demo/bad01_T1w.nii.gz
python - <<'PY'
import csv
rows = list(csv.DictReader(open("demo/cohort.tsv"), delimiter="\t"))
rows.append({"subject": "bad01", "nifti": "bad01_T1w.nii.gz"})
fields = ["subject", "dicom", "nifti", "reference"]
with open("demo/cohort_ci.tsv", "w", newline="") as fh:
    writer = csv.DictWriter(fh, fields, delimiter="\t", restval="")
    writer.writeheader()
    writer.writerows(rows)
PY
# overrides of config/config.yaml (merged key by key)
cat > slurm_ci.yaml <<YAML
cohort: $work/demo/cohort_ci.tsv
register:
  gpu: true
  device: cpu
YAML

start=$(date +%s)
set +e
# snakemake ignores SIGTERM while it waits on SLURM: KILL is the only reliable stop
timeout -s KILL 1800 snakemake -s "$repo/Snakefile" -d "$work" --profile "$repo/profiles/slurm" \
    --software-deployment-method env-modules \
    --configfile "$repo/config/config.yaml" slurm_ci.yaml 2>&1 \
    | python -u -c 'import sys, time
for line in sys.stdin:
    print(f"{time.time():.1f} {line}", end="", flush=True)' | tee snakemake.out
status=${PIPESTATUS[0]}
set -e
echo "snakemake exit status $status after $(( $(date +%s) - start )) s"
squeue --states=all --noheader -O "JobID:|,Partition:|,State:|,tres-per-job:|,tres-alloc:" > squeue.txt || true
python "$repo/scripts/check_slurm_run.py" "$work" --exit-status "$status" --failing bad01 --good demo01 demo02
