# Config validation, paths, subject list and wildcard constraints shared by all rules.
import csv
from pathlib import Path

from snakemake.utils import validate


validate(config, schema="../schemas/config.schema.yaml")

# The unireg CLI, run from this checkout: inside a rule's conda env only third-party packages
# are installed (envs/*.yaml), and `python -m unireg` imports the package from the source tree.
REPO = Path(workflow.basedir)  # the directory of the root Snakefile: the repository
UNIREG = f"PYTHONPATH={REPO} python -m unireg"
RESULTS = config["results"]
DEMO_DIR = config["demo"]["out"]
ATLAS_DIR = (
    f"resources/atlas/{config['atlas']}" if config["atlas"] == "mni2009a" else config["atlas"]
)
USE_GPU = bool(config["register"]["gpu"])


wildcard_constraints:
    subject="[A-Za-z0-9]+",


def cohort_input():
    """The cohort as given: the generated demo TSV, a cohort TSV or a DICOM folder."""
    return f"{DEMO_DIR}/cohort.tsv" if config["cohort"] == "demo" else config["cohort"]


def subjects():
    """Subject ids, known before anything runs wherever possible (config, demo, cohort TSV);
    only a bare DICOM folder needs the `index` checkpoint's manifest."""
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


def log(rule_name):
    return f"logs/{rule_name}/{{subject}}.log"


def bench(rule_name):
    return f"benchmarks/{rule_name}/{{subject}}.tsv"
