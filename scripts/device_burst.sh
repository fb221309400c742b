#!/usr/bin/env bash
# One lease of a GPU machine (issue 15), run from the repository root:
#   1. the CUDA path of `unireg register` on a real preprocessed IXI pair (twice: cold, warm), and the
#      same pair on the CPU, with the agreement of the two label maps;
#   2. scripts/train_burst.py: every recipe below trained side by side until a deadline;
#   3. everything packed into $OUT (burst.tar parts, burst.json, register.txt, nvidia-smi.txt).
# Needs, carried: .whl (monai, nibabel wheels) and .gpu (dataset.tsv, the preprocessed cache of
# the 40 IXI subjects, $UNIREG_HOME with the 2 mm atlas). BURST_SECONDS sets the deadline; RECIPES
# (space-separated config paths) replaces the recipe list; .gpu/resume/NAME (a run's last.pt,
# best.pt, log.csv), where present, is copied into the burst's run NAME, which then resumes from it;
# SKIP_REGISTER=1 skips step 1.
set -u
OUT=${OUT:-/tmp/out}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"
if [ -d .whl ] && ! python3 -c "import monai, nibabel" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export UNIREG_HOME=$PWD/.gpu/home PYTHONUNBUFFERED=1
(nvidia-smi; python3 -c "import torch; print(torch.__version__, torch.cuda.is_available())") > "$OUT/nvidia-smi.txt" 2>&1
fixed=.gpu/cache/IXI012-HH-1211_T1 moving=.gpu/cache/IXI033-HH-1259_T1
[ "${SKIP_REGISTER:-0}" = 1 ] || {
  for dev in $DEVICE $DEVICE cpu; do
    t0=$EPOCHREALTIME
    python3 -m unireg register --fixed $fixed/preproc.nii.gz --moving $moving/preproc.nii.gz \
      --moving-labels $moving/labels.nii.gz --fixed-mask $fixed/brainmask.nii.gz --out /tmp/reg_$dev --device $dev 2>&1 | tail -4
    echo "register on $dev: $(awk "BEGIN{print $EPOCHREALTIME - $t0}") s wall (process start included)"
  done
  python3 - "$DEVICE" <<'PY'
import sys, glob, numpy as np, nibabel as nib
from unireg.metrics import mean_dice
dev = sys.argv[1]
a = sorted(glob.glob(f"/tmp/reg_{dev}/*label*.nii.gz")); b = sorted(glob.glob("/tmp/reg_cpu/*label*.nii.gz"))
la, lb = np.asarray(nib.load(a[0]).dataobj), np.asarray(nib.load(b[0]).dataobj)
f = np.asarray(nib.load(".gpu/cache/IXI012-HH-1211_T1/labels.nii.gz").dataobj)
print(f"{a[0]} vs {b[0]}: voxels differing {int((la != lb).sum())} of {la.size}; "
      f"mean Dice {dev} vs cpu {mean_dice(lb, la):.4f}; vs fixed labels: {dev} {mean_dice(f, la):.4f}, cpu {mean_dice(f, lb):.4f}")
PY
} > "$OUT/register.txt" 2>&1
cat "$OUT/register.txt" 2>/dev/null
RECIPES=${RECIPES:-config/train_default.yaml config/train_remap.yaml config/train_mind.yaml config/train_mind_remap.yaml \
  config/train_mobilenet_mind.yaml config/train_mobilenet_mind_remap.yaml config/train_reinit.yaml config/train_scratch.yaml}
for run in .gpu/resume/*/; do
  [ -d "$run" ] && [ ! -e /tmp/burst/$(basename "$run")/last.pt ] && mkdir -p /tmp/burst && cp -r "$run" /tmp/burst/
done
python3 scripts/train_burst.py --data .gpu/dataset.tsv --cache .gpu/cache --work /tmp/burst --device "$DEVICE" \
  --seconds "${BURST_SECONDS:-380}" --grace 45 --pack "$OUT" ${BURST_ARGS:-} $RECIPES
