# Config validation, paths, subject list and wildcard constraints shared by all rules.
import csv
import os
import re
import sys
from pathlib import Path

from snakemake.utils import validate

sys.path.insert(0, str(Path(workflow.basedir)))  # this checkout's unireg (its layout module is pure Python)
from unireg.batch import BATCH_PATTERN, dag_state, split
from unireg.defaults import ATLAS_SET_FILE, BUILTIN_ATLASES, FUSION
from unireg.layout import SUBJECT_PATTERN, atlas_entities, subject_files

validate(config, schema="../schemas/config.schema.yaml")

# The unireg CLI, run from this checkout: inside a rule's conda env only third-party packages
# are installed (envs/*.yaml), and `python -m unireg` imports the package from the source tree.
REPO = Path(workflow.basedir)  # the directory of the root Snakefile: the repository
UNIREG = f"PYTHONPATH={REPO} python -m unireg"
RESULTS = config["results"]
# everything that is not a result: logs, per-rule benchmarks, the built atlas, the demo cohort
WORK = config["work"]
LOGS = f"{WORK}/logs"
DEMO_DIR = f"{WORK}/demo"
# the secret salt of the hashed study/series UIDs (made once by `unireg index`; keep it to keep the hashes)
UID_SALT = f"{WORK}/uid_salt"
# each series' DICOM file paths (written by `unireg index`, read by `unireg convert`): intermediate,
# and the input files' names may be UIDs, so never under RESULTS (which users share)
SERIES_FILES = f"{WORK}/manifest.files.json"
# series_filter as `unireg index` options (an empty value: no filter)
SERIES_FILTER = " ".join(f"--{k.replace('_', '-')} '{v}'" for k, v in config["series_filter"].items() if v)
# the results layout (unireg/layout.py): every per-subject file's path, with the {subject} wildcard
SPACE, ATLAS_LABEL = atlas_entities(config["atlas"])
FILES = {key: f"{RESULTS}/{name}" for key, name in subject_files("{subject}", SPACE, ATLAS_LABEL).items()}
# a built-in atlas (unireg.defaults.BUILTIN_ATLASES) is built by the atlas rule into <work>/atlas/<name>
BUILTIN_ATLAS_DIR = f"{WORK}/atlas/{{atlas_name}}"
# an atlas set (`unireg atlas import-set`): multi-atlas segmentation, the segment rule in place of
# register; subjects are preprocessed onto the set's reference atlas
ATLAS_SET = config["atlas"] not in BUILTIN_ATLASES and (Path(config["atlas"]) / ATLAS_SET_FILE).is_file()
if config["atlas"] in BUILTIN_ATLASES:
    ATLAS_DIR = BUILTIN_ATLAS_DIR.format(atlas_name=config["atlas"])
elif ATLAS_SET:
    ATLAS_DIR = f"{config['atlas']}/reference"
else:
    ATLAS_DIR = config["atlas"]
# the label table of the propagated labels: the atlas's, or the one every member of the set shares
LABEL_TABLE = f"{config['atlas']}/atlas_labels.tsv" if ATLAS_SET else f"{ATLAS_DIR}/atlas_labels.tsv"
ATLAS_SET_OPTIONS = {"fusion": FUSION, "k": 0, **(config.get("atlas_set") or {})}
USE_GPU = bool(config["register"]["gpu"])
REGISTER_DEVICE = config["register"].get("device", "auto")
if REGISTER_DEVICE == "auto":
    REGISTER_DEVICE = "cuda" if USE_GPU else "cpu"
# the `unireg register` / `unireg segment` options of the GPU stage (register, or segment with an atlas set)
REGISTRATION_OPTIONS = " ".join(
    ([f"--model {config['register']['model']}"] if config["register"]["model"] else [])
    + [
        f"--device {REGISTER_DEVICE}",
        f"--instance-opt {config['register']['instance_opt']}",
        f"--instance-opt-similarity {config['register']['instance_opt_similarity']}",
        f"--network-grid {config['register']['network_grid']}",
        "--mirror" if config["register"]["mirror"] else "--no-mirror",
    ]
)


# batches (unireg.batch): every per-subject stage runs as one job per batch of subjects; each
# batch's ledger (<work>/batches/<stage>/<batch>.tsv) records its members' outcomes
BATCH_SIZE = config["batch_size"]
BATCHES = f"{WORK}/batches"


wildcard_constraints:
    subject=SUBJECT_PATTERN,
    batch=BATCH_PATTERN,
    atlas_name="|".join(re.escape(name) for name in BUILTIN_ATLASES),


def cohort_input():
    """The cohort as given: the generated demo TSV, a cohort TSV or a DICOM folder."""
    return f"{DEMO_DIR}/cohort.tsv" if config["cohort"] == "demo" else config["cohort"]


# subjects() and batches(), read once per Snakemake process (params functions ask for them per job)
_CACHE = {}


def subjects():
    """Subject ids, known before anything runs wherever possible (config, demo, cohort TSV);
    only a bare DICOM folder needs the `index` checkpoint's manifest."""
    if "subjects" not in _CACHE:
        _CACHE["subjects"] = _read_subjects()  # not cached while the checkpoint is incomplete (it raises)
    return _CACHE["subjects"]


def _read_subjects():
    if config["subjects"]:
        return list(config["subjects"])
    if config["cohort"] == "demo":
        return [f"demo{k:02d}" for k in range(1, config["demo"]["subjects"] + 1)]
    if Path(config["cohort"]).is_file():
        with open(config["cohort"]) as fh:
            return sorted({row["subject"] for row in csv.DictReader(fh, delimiter="\t")})
    manifest = checkpoints.index.get().output.manifest
    with open(manifest) as fh:
        return sorted({row["subject"] for row in csv.DictReader(fh, delimiter="\t")})


def batches():
    """Batch id -> its members (unireg.batch.split of the sorted subjects, config batch_size)."""
    if "batches" not in _CACHE:
        _CACHE["batches"] = split(subjects(), BATCH_SIZE)
    return _CACHE["batches"]


def ledger(stage, batch="{batch}"):
    """``WORK/batches/<stage>/<batch>.tsv``: the output of a stage's batch job (unireg.batch)."""
    return f"{BATCHES}/{stage}/{batch}.tsv"


def all_ledgers(stage):
    """Every batch's ledger of a stage (an input function)."""
    return lambda w: [ledger(stage, b) for b in batches()]


def template(path):
    """A per-member path template (``{subject}`` in it) as a params value: Snakemake leaves it as is."""
    return lambda wildcards: str(path)


def batch_params(stage, inputs, outputs, after=None):
    """A batch rule's params: `options`, the `unireg batch` options (members, ledger, per-member log,
    input and output templates, the previous stage's ledger), and `state`, the rerun trigger of
    unireg.batch.dag_state (it changes when a member failed or lost its outputs)."""

    def options(wildcards):
        parts = ["--stage", stage, "--ledger", ledger(stage, wildcards.batch), "--log", log(stage)]
        parts += ["--subjects", *batches()[wildcards.batch]]
        if after:
            parts += ["--after", ledger(after, wildcards.batch)]
        return " ".join(parts + ["--inputs", *inputs, "--outputs", *outputs])

    def state(wildcards):
        return dag_state(ledger(stage, wildcards.batch), batches()[wildcards.batch], outputs)

    return {"options": options, "state": state}


def log(rule_name, name="{subject}"):
    """``WORK/logs/<rule>/<subject>.log`` (a cohort-level rule passes its own name)."""
    return f"{LOGS}/{rule_name}/{name}.log"


def bench(rule_name, name="{batch}"):
    """``WORK/benchmarks/<rule>/<batch>.tsv``: Snakemake's per-job time and memory (a batch job's,
    or a cohort-level rule's under its own name); each member's seconds are in the ledger."""
    return f"{WORK}/benchmarks/{rule_name}/{name}.tsv"


def batch_log(stage):
    """``WORK/batches/<stage>/<batch>.log``: the batch job's own log (each member logs to log(stage))."""
    return f"{BATCHES}/{stage}/{{batch}}.log"


def write_report_after_failure():
    """After a run with failed jobs (onerror): the cohort report over the subjects that finished,
    listing each failed subject with its one-line error. Its files get an mtime of 0 (the epoch),
    so the next run's report rule rebuilds them once the failures are fixed."""
    import subprocess

    html, summary = Path(RESULTS) / "report.html", Path(RESULTS) / "cohort_metrics.tsv"
    command = f"{UNIREG} report {RESULTS} --out {html} --summary {summary} --logs {LOGS}"
    if not Path(RESULTS).is_dir():
        return
    report_log = Path(log("report", "report.onerror"))  # beside the report job's log, which names the failures
    report_log.parent.mkdir(parents=True, exist_ok=True)
    with open(report_log, "w") as log_file:
        done = subprocess.run(command, shell=True, stdout=log_file, stderr=subprocess.STDOUT).returncode == 0
    if done:
        for path in (html, summary):
            os.utime(path, (0, 0))
        print(f"unireg: some jobs failed; the report lists them: {html}")
    else:
        print(
            f"unireg: some jobs failed; the report could not be written ({report_log}). "
            f"Once the results are there: {command}"
        )
