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
#      in the gpu partition with a GPU allocated; the corrupt subject, in one batch with the good
#      ones (config batch_size), failed alone: its batch jobs completed, their ledgers record the
#      failure, the good subjects' outputs are complete and correct, and the report job failed the
#      run, reported within a minute;
#   5. the same cohort again (in <work>/set) with an atlas set of 2 members made from the atlas the
#      first run built: multi-atlas segmentation, the segment rule on the gpu partition, checked alike;
#   6. tear the cluster down (also on failure).
# Usage: scripts/ci_slurm.sh [workdir]   (default: a fresh temporary folder)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-$(mktemp -d /tmp/unireg-slurm.XXXXXX)}
export PATH="$repo/.venv/bin:$PATH"
export PYTHONUNBUFFERED=1   # snakemake's messages reach the timestamped log as they happen

bash "$repo/scripts/slurm_local.sh" start
trap 'bash "$repo/scripts/slurm_local.sh" stop' EXIT

# run_slurm DIR CONFIG: snakemake over SLURM in DIR with CONFIG's overrides; leaves DIR/snakemake.out
# (each line prefixed with its epoch second) and DIR/squeue.txt, and sets $status
run_slurm() {
    local dir=$1 overrides=$2 start
    start=$(date +%s)
    set +e
    # snakemake ignores SIGTERM while it waits on SLURM: KILL is the only reliable stop
    timeout -s KILL 1800 snakemake -s "$repo/Snakefile" -d "$dir" --profile "$repo/profiles/slurm" \
        --software-deployment-method env-modules \
        --configfile "$repo/config/config.yaml" "$overrides" 2>&1 \
        | python -u -c 'import sys, time
for line in sys.stdin:
    print(f"{time.time():.1f} {line}", end="", flush=True)' | tee "$dir/snakemake.out"
    status=${PIPESTATUS[0]}
    set -e
    echo "snakemake in $dir: exit status $status after $(( $(date +%s) - start )) s"
    squeue --states=all --noheader -O "JobID:|,Partition:|,State:|,tres-per-job:|,tres-alloc:" > "$dir/squeue.txt" || true
}

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

run_slurm "$work" "$work/slurm_ci.yaml"
first=0
python "$repo/scripts/check_slurm_run.py" "$work" --exit-status "$status" --failing bad01 --good demo01 demo02 || first=$?

# 5. multi-atlas segmentation: a 2-member atlas set (the built atlas and a shifted copy, which
# import-set aligns back), the same cohort, segment in place of register
mkdir -p "$work/set/members"
cd "$work/set"
PYTHONPATH="$repo" python - "$work/work/atlas/mni2009a-allen" <<'PY'
import sys
from pathlib import Path
from unireg.atlas import ATLAS_FILES
from unireg.io import Image, load_image, save_image
atlas = Path(sys.argv[1])
rows = ["id\timage\tlabels"]
for name, shift in (("m1", 0.0), ("m2", 4.0)):
    for key, label in (("image", False), ("labels", True)):
        img = load_image(atlas / ATLAS_FILES[key], label=label)
        affine = img.affine.copy()
        affine[:3, 3] += shift
        save_image(Image(img.data, affine, is_label=label), Path("members") / f"{name}_{key}.nii.gz")
    rows.append(f"{name}\t{name}_image.nii.gz\t{name}_labels.nii.gz")
Path("members/members.tsv").write_text("\n".join(rows) + "\n")
PY
PYTHONPATH="$repo" python -m unireg atlas import-set --manifest members/members.tsv \
    --table "$work/work/atlas/mni2009a-allen/atlas_labels.tsv" --reference "$work/work/atlas/mni2009a-allen" --out "$work/set/ciset"
cat > slurm_ci_set.yaml <<YAML
cohort: $work/demo/cohort_ci.tsv
atlas: $work/set/ciset
atlas_set:
  fusion: jlf
  k: 0
register:
  gpu: true
  device: cpu
YAML
run_slurm "$work/set" "$work/set/slurm_ci_set.yaml"
second=0
python "$repo/scripts/check_slurm_run.py" "$work/set" --exit-status "$status" --failing bad01 --good demo01 demo02 \
    --atlas "$work/set/ciset" || second=$?
[ "$first" -eq 0 ] && [ "$second" -eq 0 ]
