"""BIDS in and out: a raw BIDS dataset as the cohort, and the names of our BIDS-derivatives outputs.

Input (:func:`index_bids`). Every ``sub-<label>[/ses-<label>]/anat/*_T1w.nii[.gz]`` below the
dataset root is a candidate; ``derivatives/``, ``sourcedata/``, ``code/`` and dot folders are never
read (only ``sub-*`` folders are), ``.bidsignore`` is not consulted. Each session is a separate
workflow input, whose id (the manifest's ``subject`` column, ``^[A-Za-z0-9]+$``) is

    ``<sub>``             for a subject without sessions   (``sub-01/anat/...``       -> ``01``)
    ``<sub>ses<ses>``     for each session of a subject   (``sub-01/ses-pre/anat/...`` -> ``01sespre``)

Two different inputs that would get the same id (``sub-01ses1`` without sessions and
``sub-01/ses-1``) are a one-line :class:`UniregError` naming both. Several T1w images of one input
are ranked, and the first is ``selected`` (1; the others 0, ``selection_reason`` on every row says
why): (1) without a contrast agent first (no ``ce-`` entity: the atlas template is a
non-contrast T1w), (2) the highest ``run`` number first (the last repeat, usually acquired because
an earlier one was degraded; no ``run`` counts as run 0), (3) file name order (e.g. between two
``acq-`` labels). A broken link (git-annex/DataLad content not fetched) is never chosen. A
participant of ``participants.tsv``, a subject folder or a session folder without any T1w image
does not vanish: it is a row with ``selected`` 0, ``n_files`` 0 and a ``problem``
(``no T1w image in the BIDS dataset``), so ``unireg convert`` of it fails with that line.

We parse the file names ourselves rather than with pybids (``bids.BIDSLayout``): on 200 subjects
x 2 sessions (4,800 files) pybids 0.22 took 6-11 s to index and ~160 MB, and brings SQLAlchemy,
formulaic and friends into the index environment; this glob-based parser needs ~0.1 s and nothing.

Output (:func:`write_dataset_description`, :func:`validate_derivatives`). Every output path is
built by :func:`unireg.layout.derivative_name` (one helper, entities in the order of the BIDS
schema); :mod:`unireg.layout` lists the files. They pass the official BIDS validator
(``bids-validator-deno`` 3.0.2, schema of BIDS 1.11.1) in a ``DatasetType: derivative`` dataset:
a T1w image needs a JSON sidecar with ``SkullStripped``, an image in a non-standard ``space-``
(not a TemplateFlow name such as ``MNI152NLin2009aSym``) needs ``SpatialReference``, a ``res-``
entity needs ``Resolution`` (so we do not use ``res-``). Transforms and metrics have no BIDS 1.11
name (``xfm`` is BEP014, a proposal): they use the fMRIPrep/BEP014 names and are listed in
``.bidsignore`` (:data:`NON_BIDS_PATTERNS`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from . import __version__
from .cohort import INT_COLUMNS, MANIFEST_COLUMNS, validate_subject_id
from .errors import UniregError
from .io import write_text_atomic
from .layout import LABEL, derivative_name  # noqa: F401 (derivative_name: part of this API)

BIDS_VERSION = "1.11.1"  # the schema bundled with the validator we run (bids-validator-deno 3.0.2)
VALIDATOR = "bids-validator-deno"
SELECTION_COLUMNS = ("selected", "selection_reason", "problem")
BIDS_COLUMNS = ("bids_subject", "bids_session", "bids_run", "bids_acq")
NIFTI_EXTENSIONS = (".nii.gz", ".nii")
# Files the pipeline keeps that BIDS 1.11 has no name for (.bidsignore, gitignore syntax).
NON_BIDS_PATTERNS = (
    "*_xfm.*",
    "*_metrics.tsv",
    "/manifest.tsv",
    "/manifest.files.json",  # `unireg index` without --files-out only: the workflow keeps it in <work>
    "/report.html",
    "/cohort_metrics*",
)


# ---------------------------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BidsName:
    """A parsed BIDS file name: ``entities`` (short key -> label, in file order), ``suffix``, ``extension``."""

    entities: dict = field(default_factory=dict)
    suffix: str = ""
    extension: str = ""


def parse_bids_name(name: str | Path) -> BidsName:
    """Entities, suffix and extension of a BIDS file name, e.g. ``sub-01_run-2_T1w.nii.gz``.

    Raises :class:`UniregError` for a name that is not ``key-label_..._suffix.ext`` with
    alphanumeric keys and labels.
    """
    name = Path(name).name
    stem, dot, rest = name.partition(".")
    parts = stem.split("_")
    if not dot or len(parts) < 2 or not LABEL.match(parts[-1]):
        raise UniregError("not a BIDS file name (key-label_..._suffix.extension)", path=name)
    entities = {}
    for part in parts[:-1]:
        key, dash, label = part.partition("-")
        if not dash or not LABEL.match(key) or not LABEL.match(label) or key in entities:
            raise UniregError(
                f"not a BIDS file name: {part!r} is not a key-label pair of letters and digits (each key once)",
                path=name,
            )
        entities[key] = label
    return BidsName(entities, parts[-1], dot + rest)


def unit_id(subject: str, session: str | None = None) -> str:
    """The workflow id of one BIDS input: ``<sub>``, or ``<sub>ses<ses>`` for a session (module docstring)."""
    return validate_subject_id(f"{subject}ses{session}" if session else subject)


# ---------------------------------------------------------------------------------------------
# Input: index a raw BIDS dataset
# ---------------------------------------------------------------------------------------------


def is_bids_root(path: str | Path) -> bool:
    """True for a folder with a ``dataset_description.json`` and at least one ``sub-*`` folder."""
    path = Path(path)
    return (
        path.is_dir()
        and (path / "dataset_description.json").is_file()
        and any(child.is_dir() for child in path.glob("sub-*"))
    )


@dataclass(frozen=True)
class _Candidate:
    path: Path
    name: BidsName

    @property
    def contrast(self) -> str:
        return self.name.entities.get("ce", "")

    @property
    def run(self) -> int:
        return int(self.name.entities.get("run", 0))

    @property
    def broken(self) -> bool:
        return self.path.is_symlink() and not self.path.exists()

    def rank(self) -> tuple:
        """Smaller is better: the selection rule of the module docstring."""
        return (self.broken, bool(self.contrast), -self.run, self.path.name)


def _participants(root: Path) -> list[str]:
    """Subject labels listed in ``participants.tsv`` (none when there is no such file)."""
    path = root / "participants.tsv"
    if not path.is_file():
        return []
    table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    if "participant_id" not in table.columns:
        raise UniregError("participants.tsv has no participant_id column", path=path)
    labels = []
    for value in table["participant_id"].str.strip():
        label = value[4:] if value.startswith("sub-") else ""
        if not LABEL.match(label):
            raise UniregError(f"participant_id {value!r} is not sub-<letters and digits>", path=path)
        labels.append(label)
    return labels


def _label_of(folder: Path, key: str) -> str:
    label = folder.name[len(key) + 1 :]
    if not LABEL.match(label):
        raise UniregError(f"not a BIDS {key}- folder name: the label must be letters and digits", path=folder)
    return label


def _candidates(anat: Path, subject: str, session: str | None, suffix: str) -> list[_Candidate]:
    """The ``*_<suffix>.nii[.gz]`` files of one ``anat`` folder, checked against their folders."""
    found = []
    for path in sorted(anat.glob(f"*_{suffix}.nii*")) if anat.is_dir() else []:
        if path.name.startswith(".") or not path.name.endswith(NIFTI_EXTENSIONS):
            continue
        name = parse_bids_name(path)
        if name.suffix != suffix:
            continue
        if name.entities.get("sub") != subject or name.entities.get("ses") != session:
            expected = f"sub-{subject}" + (f"_ses-{session}" if session else "")
            raise UniregError(f"the file name does not start with {expected}_ as its folders say", path=path)
        if "run" in name.entities and not name.entities["run"].isdigit():
            raise UniregError("run- must be a non-negative integer", path=path)
        found.append(_Candidate(Path(os.path.abspath(path)), name))
    return found


def _blank_row(columns: list[str]) -> dict:
    return {**{c: "" for c in columns}, **{c: 0 for c in INT_COLUMNS if c in columns}}


def _rows_of_input(
    unit: str, subject: str, session: str | None, found: list[_Candidate], suffix: str, columns: list[str]
) -> list[dict]:
    """Manifest rows of one input (a subject, or one session of it), with the selection made."""
    base = {
        **_blank_row(columns),
        "subject": unit,
        "kind": "nifti",
        "bids_subject": subject,
        "bids_session": session or "",
    }
    where = f"session ses-{session}" if session else "subject"
    if not found:
        what = f"no {suffix} image in the BIDS dataset"
        return [{**base, "selection_reason": f"not chosen: {what}", "problem": what}]
    ranked = sorted(found, key=_Candidate.rank)
    best = ranked[0]
    rows = []
    for candidate in found:
        row = {
            **base,
            "n_files": 1,
            "source": str(candidate.path),
            "bids_run": candidate.name.entities.get("run", ""),
            "bids_acq": candidate.name.entities.get("acq", ""),
        }
        if candidate.broken:
            row["selection_reason"] = (
                "not chosen: a broken link (annexed content not fetched? run 'datalad get' or 'git annex get')"
            )
        elif candidate is best:
            row["selected"] = 1
            row["selection_reason"] = _chosen_reason(best, [c for c in found if not c.broken], where, suffix)
        else:
            row["selection_reason"] = _not_chosen_reason(candidate, best)
        rows.append(row)
    if best.broken:
        problem = f"every {suffix} image of this {where} is a broken link; fetch the annexed content (datalad get)"
        for row in rows:
            row["problem"] = problem
    return rows


def _chosen_reason(best: _Candidate, usable: list[_Candidate], where: str, suffix: str) -> str:
    if len(usable) == 1:
        return f"chosen: the only {suffix} image of this {where}"
    why = []
    if not best.contrast and any(c.contrast for c in usable):
        why.append("without contrast agent (no ce-)")
    same_contrast = [c for c in usable if bool(c.contrast) == bool(best.contrast)]
    if any(c.run < best.run for c in same_contrast):
        why.append(f"the highest run number (run-{best.name.entities['run']}, the last repeat)")
    if any(c is not best and c.rank()[:3] == best.rank()[:3] for c in usable):
        why.append("first by file name among equally ranked images")
    return f"chosen: {', then '.join(why)}, of {len(usable)} {suffix} images"


def _not_chosen_reason(candidate: _Candidate, best: _Candidate) -> str:
    if candidate.contrast and not best.contrast:
        return f"not chosen: contrast-enhanced (ce-{candidate.contrast}); {best.path.name} is without contrast agent"
    if candidate.run < best.run:
        return f"not chosen: an earlier run than {best.path.name} (the last repeat is preferred)"
    return f"not chosen: ranked equal to {best.path.name}, which comes first by file name"


def index_bids(root: str | Path, suffix: str = "T1w") -> pd.DataFrame:
    """The manifest of a raw BIDS dataset: one ``nifti`` row per ``*_<suffix>.nii[.gz]`` image.

    Columns: :data:`unireg.cohort.MANIFEST_COLUMNS` (ints 0 where unknown, ``source`` the absolute
    path, ``n_files`` 1, ``reference`` "") then :data:`BIDS_COLUMNS` (``bids_subject``,
    ``bids_session``, ``bids_run``, ``bids_acq``: labels without their ``key-``, "" when absent).
    ``subject`` is the workflow id, ``selected``/``selection_reason``/``problem`` say which image
    each input uses and why (module docstring). Rows are sorted by id, then file name.
    """
    root = Path(root)
    if not is_bids_root(root):
        raise UniregError("not a BIDS dataset (needs dataset_description.json and sub-* folders)", path=root)
    if not LABEL.match(suffix):
        raise UniregError(f"BIDS suffix {suffix!r} must be letters and digits, e.g. T1w")
    columns = list(MANIFEST_COLUMNS) + [c for c in SELECTION_COLUMNS if c not in MANIFEST_COLUMNS]
    columns += list(BIDS_COLUMNS)
    inputs: dict[str, tuple[str, str | None, list[_Candidate]]] = {}

    def add(subject: str, session: str | None, found: list[_Candidate]) -> None:
        unit = unit_id(subject, session)
        if unit in inputs:
            other = inputs[unit]
            raise UniregError(
                f"BIDS {_where(*other[:2])} and {_where(subject, session)} both become the workflow "
                f"id {unit!r}; rename one subject or session",
                path=root,
            )
        inputs[unit] = (subject, session, found)

    subject_dirs = {_label_of(d, "sub"): d for d in sorted(root.glob("sub-*")) if d.is_dir()}
    for subject in dict.fromkeys(sorted(subject_dirs) + _participants(root)):
        folder = subject_dirs.get(subject)
        if folder is None:
            add(subject, None, [])
            continue
        sessions = [d for d in sorted(folder.glob("ses-*")) if d.is_dir()]
        plain = _candidates(folder / "anat", subject, None, suffix)
        if plain or not sessions:
            add(subject, None, plain)
        for ses_dir in sessions:
            session = _label_of(ses_dir, "ses")
            add(subject, session, _candidates(ses_dir / "anat", subject, session, suffix))
    rows = []
    for unit in sorted(inputs):
        subject, session, found = inputs[unit]
        rows.extend(_rows_of_input(unit, subject, session, found, suffix, columns))
    frame = pd.DataFrame(rows, columns=columns)
    for column in INT_COLUMNS:
        if column in frame.columns:
            frame[column] = frame[column].astype("int64")
    frame.attrs["files"] = {}
    frame.attrs["skipped"] = {}
    return frame


def _where(subject: str, session: str | None) -> str:
    return f"sub-{subject}/ses-{session}" if session else f"sub-{subject}"


# ---------------------------------------------------------------------------------------------
# Output: the derivatives dataset
# ---------------------------------------------------------------------------------------------


def write_dataset_description(
    results_dir: str | Path,
    source_dataset: str | Path | None = None,
    ignore: tuple[str, ...] | list[str] = NON_BIDS_PATTERNS,
) -> Path:
    """Write ``dataset_description.json`` (a BIDS derivatives dataset) and ``.bidsignore`` into ``results_dir``.

    ``source_dataset``: the raw BIDS dataset the cohort came from, if any. Its path is private and
    never written; ``SourceDatasets`` holds its ``Name`` and ``DatasetDOI`` (as ``DOI``) when its
    description has them. ``ignore``: glob patterns (gitignore syntax) of the non-BIDS files the
    pipeline keeps, one per line in ``.bidsignore``. Returns the description's path.
    """
    results_dir = Path(results_dir)
    description = {
        "Name": "unireg derivatives",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [
            {
                "Name": "unireg",
                "Version": __version__,
                "Description": "Atlas registration with frozen pretrained features (UniReg): "
                "preprocessing, deformable registration of an atlas template, "
                "atlas label propagation into native space",
            }
        ],
    }
    if source_dataset is not None:
        source = _source_description(Path(source_dataset))
        if source:
            description["SourceDatasets"] = [source]
            if "Name" in source:
                description["Name"] = f"unireg derivatives of {source['Name']}"
    write_text_atomic(results_dir / ".bidsignore", "".join(f"{pattern}\n" for pattern in ignore))
    return write_text_atomic(results_dir / "dataset_description.json", json.dumps(description, indent=2) + "\n")


def _source_description(root: Path) -> dict:
    path = root / "dataset_description.json"
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UniregError(f"cannot read the source dataset's description ({type(exc).__name__})", path=path) from exc
    source = {}
    if isinstance(info, dict):
        if str(info.get("Name", "")).strip():
            source["Name"] = " ".join(str(info["Name"]).split())
        if str(info.get("DatasetDOI", "")).strip():
            source["DOI"] = str(info["DatasetDOI"]).strip()
    return source


def validator_command() -> list[str]:
    """The BIDS validator to run (``bids-validator-deno``, beside this Python or on ``PATH``)."""
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    exe = shutil.which(VALIDATOR, path=search)
    if exe is None:
        raise UniregError(f"{VALIDATOR} not found: pip install bids-validator-deno (see requirements.txt)")
    return [exe]


def validate_derivatives(root: str | Path, *, warnings: bool = False, timeout_s: float = 600) -> list[str]:
    """What the BIDS validator reports for the derivatives dataset ``root``: one line per issue.

    Runs ``bids-validator-deno --format json`` (schema of BIDS :data:`BIDS_VERSION`; it knows the
    derivative rules: ``space-``/``desc-``/``atlas-`` entities, ``_mask``, ``_dseg`` with its
    ``.tsv``, required sidecar keys) and returns its errors (and warnings with ``warnings=True``)
    as ``"CODE[/key]: /path/in/dataset: message"``; an empty list means valid. A dataset whose
    description does not say ``"DatasetType": "derivative"`` is reported too (the validator would
    check it as raw data). Files matched by ``.bidsignore`` are not checked.
    """
    root = Path(root)
    problems = []
    try:
        dataset_type = json.loads((root / "dataset_description.json").read_text()).get("DatasetType")
    except (OSError, ValueError, AttributeError):
        dataset_type = None
    if dataset_type != "derivative":
        problems.append('DATASET_TYPE: /dataset_description.json: DatasetType must be "derivative"')
    env = {**os.environ, "DENO_NO_UPDATE_CHECK": "1", "NO_COLOR": "1"}
    try:
        proc = subprocess.run(
            validator_command() + ["--format", "json", str(root)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=env,
        )
    except subprocess.TimeoutExpired as exc:
        raise UniregError(f"{VALIDATOR} did not finish in {timeout_s:g} s", path=root) from exc
    try:
        issues = json.loads(proc.stdout)["issues"]["issues"]
    except (ValueError, KeyError, TypeError) as exc:
        tail = " ".join((proc.stderr or proc.stdout).split())[-300:]
        raise UniregError(f"{VALIDATOR} failed (exit {proc.returncode}): {tail}", path=root) from exc
    for issue in issues:
        if issue.get("severity") == "error" or (warnings and issue.get("severity") == "warning"):
            code = issue.get("code", "?") + (f"/{issue['subCode']}" if issue.get("subCode") else "")
            message = " ".join(str(issue.get("issueMessage") or "").split())[:200]
            problems.append(f"{code}: {issue.get('location', '/')}" + (f": {message}" if message else ""))
    return problems
