"""Training a UniReg model on one dataset: ``unireg train --config train.yaml``.

The dataset is a folder of NIfTI images (optionally a folder of label maps whose file names start
with the image's name without extension, e.g. ``IXI012_T1.nii.gz`` -> ``IXI012_T1_DLMUSE.nii.gz``)
or a TSV with columns ``image`` and optionally ``labels`` (paths relative to the TSV). Every
image is first brought onto the atlas grid by :mod:`unireg.preprocess` (cached in
``data.cache``, default ``<output>/cache``: recipes with the same data, atlas and preprocessing
may share one); its labels follow through the same affine (nearest neighbour).

Each step draws a random ordered pair (fixed, moving) of training subjects, applies a small
random affine to the moving one (image, labels and features alike) and, with
``train.augment.gamma > 0``, a random gamma to both images' intensities, and with
``train.augment.remap`` = p > 0, to each image independently with probability p a random
contrast (a random monotone or non-monotone intensity curve: the source dataset seen under
contrasts it does not have); features are then recomputed every step from the augmented images,
while the loss compares the original ones. With ``train.augment.flip`` = p > 0, with probability p
the pair is the two subjects mirrored left-right (images, labels and features of the mirrored
images, along the atlas grid's left-right axis): brains as plausible as the originals, which
test-time mirroring (:meth:`unireg.model.UniRegNet.predict_images`) also shows the network. It
predicts the displacement
and minimises ``similarity + smooth_weight * regulariser + dice_weight * Dice loss`` (the Dice
term uses ``dice_labels`` random labels present in both maps). Frozen extractors' features
are computed once per image (they do not change); ``scratch`` computes them every step.

**When it stops.** ``train.steps`` is the most steps a run takes. With ``train.plateau.patience``
= P > 0 it stops earlier, at a *plateau*: when P validations in a row have not raised the best
validation Dice (network alone) by at least ``train.plateau.min_delta``. With
``train.plateau.lr_drops`` = D > 0 the first D plateaus do not stop the run: each multiplies the
learning rate by ``train.plateau.lr_factor`` (default 0.1) and restarts the count, training on from
the current weights and optimiser state (PyTorch's ``ReduceLROnPlateau`` with ``mode="max"``,
``threshold_mode="abs"``, ``threshold=min_delta``; the D + 1-th plateau stops it). A run that stopped
at a plateau resumes past it when its recipe is given more drops. The shipped model is the
best validation checkpoint (``best_step`` in the card), not the last step.

**Stopping and resuming.** ``last.pt`` holds everything the next step depends on (model,
optimiser, step, numpy and torch RNG states, best-so-far and plateau counter) and is written
every ``train.checkpoint_every`` steps, at each validation and when the run is stopped: Ctrl-C
or SIGTERM (e.g. a scheduler's time limit) finish the current step, write ``last.pt`` and
exit. Running the same command again resumes from it, and the result is the same, step for step,
as a run that was never stopped (``log.csv`` is cut back to the resumed step). ``--restart``
starts from step 0. A long run can go on in the background (``nohup unireg train ... &``;
``log.csv`` grows as it goes).

**Starting from trained weights.** ``train.init``: a checkpoint (``unireg train``'s ``model.pt``
or a snapshot; ``default``: the packaged default model) whose weights start a new run instead of
a random initialisation, e.g. to train a shipped model further or to fine-tune it on another
cohort. Its architecture (``model`` section) must be the recipe's, or the same with a smaller
``model.cascade``: the stages it lacks then start as copies of its last stage (growing a cascade
by a stage). ``train.frozen_stages`` = k keeps the first k stages' weights fixed (e.g. the grown
cascade's trained stages, so that only the new one learns). The optimiser starts afresh.
The run validates once before its first step (step 0 of the learning curve: where it started),
and the card records the checkpoint (path, sha256, its own steps). A resumed run continues from
``last.pt`` as always.

**Device.** ``train.device``: ``auto`` (CUDA when visible, else CPU), ``cpu`` or ``cuda``;
the recipe is the same on both.

Outputs in ``output``: ``config.yaml`` (as run), ``splits.json``, ``log.csv`` (losses per step;
at each validation the Dice of the network alone and, with ``train.val_io_steps`` > 0, after
that many instance-optimisation steps), ``last.pt``, ``best.pt`` (the best validation weights),
``model.pt`` (the shipped model, with ``model.pt.sha256``), ``model_card.json`` and
``model_card.md`` (the learning curve as a table) with ``learning_curve.png``; with
``train.snapshot_every`` = N > 0, ``snapshots/step_<step>.pt`` every N steps: checkpoints as
loadable as ``model.pt`` (their card has the step's validation, where one was run), so that
recipes trained for different lengths can be compared at one step.
"""

from __future__ import annotations

import copy
import csv
import json
import random
import signal
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from . import __version__
from .affine import read_affine_txt
from .atlas import load_atlas
from .defaults import DEFAULT_EXTRACTOR, DEVICE
from .errors import UniregError
from .fields import jacobian_stats, resize_field, warp, warp_affine
from .io import load_image, save_image, write_atomic, write_text_atomic
from .losses import ImageSimilarity, dice_loss, one_hot, regulariser
from .metrics import mean_dice
from .model import DEFAULT_MODEL, architecture, build_model, load_checkpoint, model_state, save_checkpoint
from .preprocess import OUTPUT_FILES, PreprocessOptions, preprocess_file
from .register import InstanceOptOptions, instance_optimise, left_right_axis
from .runtime import select_device
from .transforms import resample

DEFAULTS = {
    "data": {"images": None, "labels": None, "n_train": 30, "n_val": 10, "split_seed": 0, "exclude": [], "cache": None},
    "atlas": "mni2009a",
    "preprocess": {"brain_extraction": True, "similarity": "mi"},
    "model": {
        "extractor": DEFAULT_EXTRACTOR,
        "extractor_weights": None,
        "channels": [16, 32, 32, 32],
        "flow_stride": 2,
        "int_steps": 7,
        "cascade": 1,
    },
    "loss": {
        "similarity": "lncc",
        "regulariser": "diffusion",
        "smooth_weight": 1.0,
        "dice_weight": 1.0,
        "dice_labels": 16,
    },
    "train": {
        "steps": 1000,
        "learning_rate": 1e-3,
        "init": None,
        "frozen_stages": 0,
        "seed": 0,
        "validate_every": 250,
        "val_pairs": 9,
        "val_io_steps": 0,
        "plateau": {"patience": 0, "min_delta": 0.002, "lr_factor": 0.1, "lr_drops": 0},
        "checkpoint_every": 50,
        "snapshot_every": 0,
        "device": DEVICE,
        "augment": {"rotation_deg": 5.0, "translation_mm": 4.0, "scale": 0.05, "gamma": 0.0, "remap": 0.0, "flip": 0.0},
    },
    "output": None,
}


def merge_config(user: dict, defaults: dict = DEFAULTS, where: str = "") -> dict:
    """Defaults overridden by ``user``; an unknown key is an error that names it."""
    out = copy.deepcopy(defaults)
    for key, value in (user or {}).items():
        if key not in defaults:
            raise UniregError(f"unknown config key '{where}{key}'; valid keys: {', '.join(defaults)}")
        if isinstance(defaults[key], dict) and defaults[key]:
            if not isinstance(value, dict):
                raise UniregError(f"config key '{where}{key}' must be a mapping")
            out[key] = merge_config(value, defaults[key], f"{where}{key}.")
        else:
            out[key] = value
    return out


def load_config(path: str | Path) -> dict:
    path = Path(path)
    try:
        user = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise UniregError(f"cannot read training config ({type(exc).__name__})", path=path) from exc
    config = merge_config(user)
    plateau = config["train"]["plateau"]
    if plateau["lr_drops"] and not 0 < plateau["lr_factor"] < 1:
        raise UniregError(f"train.plateau.lr_factor must be between 0 and 1, not {plateau['lr_factor']}", path=path)
    flip = config["train"]["augment"]["flip"]
    if not 0.0 <= flip <= 1.0:
        raise UniregError(f"train.augment.flip must be a probability in [0, 1], not {flip}", path=path)
    frozen, cascade = config["train"]["frozen_stages"], config["model"]["cascade"]
    if not (isinstance(frozen, int) and 0 <= frozen < cascade):
        raise UniregError(
            f"train.frozen_stages must be a whole number from 0 to model.cascade - 1 = {cascade - 1}, not {frozen}",
            path=path,
        )
    if frozen and not config["train"]["init"]:
        raise UniregError(
            "train.frozen_stages needs train.init: frozen stages would keep their random weights", path=path
        )
    base = path.parent
    for section, key in (("data", "images"), ("data", "labels"), ("data", "cache")):
        if config[section][key]:
            config[section][key] = str((base / config[section][key]).resolve())
    if not config["data"]["images"]:
        raise UniregError("config needs data.images (a folder of NIfTI files or a TSV)", path=path)
    if not config["output"]:
        raise UniregError("config needs output (a folder for checkpoints and logs)", path=path)
    config["output"] = str((base / config["output"]).resolve())
    init = config["train"]["init"]
    if init and init != "default":
        config["train"]["init"] = str((base / init).resolve())
    return config


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def discover_dataset(images: str | Path, labels: str | Path | None = None) -> list[dict]:
    """``[{"id", "image", "labels"}]`` from a folder (+ label folder) or a TSV, sorted by id."""
    images = Path(images)
    items = []
    if images.is_file():
        rows = [ln.split("\t") for ln in images.read_text().splitlines() if ln.strip()]
        header = [h.strip() for h in rows[0]]
        if "image" not in header:
            raise UniregError("dataset TSV needs a header with an 'image' column", path=images)
        for row in rows[1:]:
            rec = dict(zip(header, (c.strip() for c in row)))
            image = (images.parent / rec["image"]).resolve()
            lab = (images.parent / rec["labels"]).resolve() if rec.get("labels") else None
            items.append({"id": rec.get("id") or _stem(image), "image": str(image), "labels": lab and str(lab)})
    elif images.is_dir():
        label_files = sorted(Path(labels).glob("*.nii*")) if labels else []
        for image in sorted(images.glob("*.nii*")):
            stem = _stem(image)
            match = [p for p in label_files if p.name.startswith(stem)]
            items.append({"id": stem, "image": str(image), "labels": str(match[0]) if match else None})
    else:
        raise UniregError("dataset not found (a folder of NIfTI files or a TSV)", path=images)
    if not items:
        raise UniregError("dataset has no NIfTI images", path=images)
    return sorted(items, key=lambda r: r["id"])


def steps_seen(card: dict) -> int | None:
    """The training steps a checkpoint's weights saw (None if its card does not say): its run's up
    to the step they are (a finished run's model.pt is its best step, not its last) plus those of the
    weights that run started from (``init.steps``, their own lineage)."""
    seen = card.get("best_step", card.get("steps"))
    return None if seen is None else seen + ((card.get("init") or {}).get("steps") or 0)


def split_dataset(items: list[dict], n_train: int, n_val: int, seed: int, exclude=()) -> tuple[list, list]:
    items = [r for r in items if r["id"] not in set(exclude)]
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    if n_train + n_val > len(items):
        raise UniregError(f"dataset has {len(items)} subjects; n_train + n_val = {n_train + n_val}")
    return [items[i] for i in order[:n_train]], [items[i] for i in order[n_train : n_train + n_val]]


def prepare_subject(item: dict, atlas, cache: Path, options: PreprocessOptions) -> dict:
    """Preprocess one subject onto the atlas grid (cached); labels follow the same affine."""
    out = cache / item["id"]
    if not (out / OUTPUT_FILES["info"]).is_file():
        preprocess_file(item["image"], atlas, out, options, subject=item["id"])
    record = {
        "id": item["id"],
        "image": load_image(out / OUTPUT_FILES["image"]).data,
        "mask": load_image(out / OUTPUT_FILES["mask"], label=True).data,
        "labels": None,
    }
    if item.get("labels"):
        lab_path = out / "labels.nii.gz"
        if not lab_path.is_file():
            labels = load_image(item["labels"], label=True, subject=item["id"])
            save_image(resample(labels, atlas.grid, read_affine_txt(out / OUTPUT_FILES["affine"])), lab_path)
        record["labels"] = load_image(lab_path, label=True).data
    return record


def mirrored_record(record: dict, axis: int) -> dict:
    """A prepared subject mirrored along voxel ``axis`` (image, mask, labels), under its own id."""

    def flip(array):
        return None if array is None else np.ascontiguousarray(np.flip(array, axis=axis))

    return {**record, "id": f"{record['id']}~mirrored", **{k: flip(record[k]) for k in ("image", "mask", "labels")}}


VOXEL_MM = 2.0  # nominal atlas voxel size used to express augmentation shifts in mm


def random_affine_theta(rng: np.random.Generator, augment: dict, shape) -> torch.Tensor:
    """A small random affine as a ``torch.nn.functional.affine_grid`` theta for
    :func:`unireg.fields.warp_affine` (normalised coordinates, any resolution).

    Rotations act in normalised coordinates, so on a non-cubic grid they carry a slight shear:
    harmless for augmentation, which only has to be small, random and the same for image,
    labels and features."""
    angles = np.deg2rad(rng.uniform(-1, 1, 3) * augment["rotation_deg"])
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rot = (
        np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
        @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        @ np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    )
    lin = rot @ np.diag(1 + rng.uniform(-1, 1, 3) * augment["scale"])
    # normalised coordinates span [-1, 1] from the first to the last voxel centre (fields.ALIGN_CORNERS):
    # a shift of t mm is t / (that distance / 2)
    shift = rng.uniform(-1, 1, 3) * augment["translation_mm"] / ((np.asarray(shape, float) - 1) * VOXEL_MM / 2.0)
    # affine_grid orders coordinates (x=W, y=H, z=D): reverse the voxel axes
    perm = np.eye(3)[::-1]
    theta = np.concatenate([perm @ lin @ perm, (perm @ shift)[:, None]], axis=1)
    return torch.tensor(theta, dtype=torch.float32)[None]


LOG_FIELDS = [
    "step",
    "total",
    "similarity",
    "smooth",
    "dice",
    "seconds",
    "learning_rate",
    "val_dice_affine",
    "val_dice",
    "val_dice_io",
    "val_folding_percent",
]
CURVE_FIELDS = ["step", "val_dice_affine", "val_dice", "val_dice_io", "val_folding_percent"]


REMAP_KNOTS = 6  # knots of augment.remap's random intensity curves, evenly spaced over [0, 1]


def random_remap(image: torch.Tensor, values: np.ndarray) -> torch.Tensor:
    """``image`` (intensities in [0, 1]) through the piecewise-linear curve taking evenly spaced
    knots over [0, 1] to ``values``."""
    knots = torch.linspace(0.0, 1.0, len(values), dtype=image.dtype, device=image.device)
    curve = torch.as_tensor(values, dtype=image.dtype, device=image.device)
    x = image.clamp(0.0, 1.0).contiguous()
    upper = torch.bucketize(x, knots).clamp(1, len(values) - 1)
    x0, x1, y0, y1 = knots[upper - 1], knots[upper], curve[upper - 1], curve[upper]
    return y0 + (x - x0) / (x1 - x0) * (y1 - y0)


class Trainer:
    """Holds the data, model and optimiser of one training run (see the module docstring)."""

    def __init__(self, config: dict, resume: bool = True, log=print):
        self.config = config
        self.log = log
        self.out = Path(config["output"])
        self.out.mkdir(parents=True, exist_ok=True)
        train_cfg = config["train"]
        self.device = select_device(train_cfg["device"])
        torch.manual_seed(train_cfg["seed"])
        self.rng = np.random.default_rng(train_cfg["seed"])
        self.atlas = load_atlas(config["atlas"])
        items = discover_dataset(config["data"]["images"], config["data"]["labels"])
        train_items, val_items = split_dataset(
            items,
            config["data"]["n_train"],
            config["data"]["n_val"],
            config["data"]["split_seed"],
            config["data"]["exclude"],
        )
        write_text_atomic(
            self.out / "splits.json",
            json.dumps({"train": [r["id"] for r in train_items], "val": [r["id"] for r in val_items]}, indent=1) + "\n",
        )
        write_text_atomic(self.out / "config.yaml", yaml.safe_dump(config, sort_keys=False))
        options = PreprocessOptions(**config["preprocess"])
        cache = Path(config["data"]["cache"]) if config["data"]["cache"] else self.out / "cache"
        t0 = time.perf_counter()
        self.train_set = [prepare_subject(r, self.atlas, cache, options) for r in train_items]
        self.val_set = [prepare_subject(r, self.atlas, cache, options) for r in val_items]
        self.log(
            f"prepared {len(self.train_set)} train + {len(self.val_set)} val subjects "
            f"in {time.perf_counter() - t0:.0f} s"
        )
        # augment.flip: the training subjects mirrored left-right, each its own record (own features)
        self.mirror_axis = left_right_axis(self.atlas.grid.affine)
        flip = train_cfg["augment"]["flip"]
        self.mirrored_set = [mirrored_record(r, self.mirror_axis) for r in self.train_set] if flip else []
        self.model = build_model(config["model"]).to(self.device)
        self.model.train()
        for stage in self.model.stage_modules()[: train_cfg["frozen_stages"]]:
            stage.requires_grad_(False)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimiser = torch.optim.Adam(self.params, lr=train_cfg["learning_rate"])
        loss_cfg = config["loss"]
        self.similarity = ImageSimilarity(loss_cfg["similarity"])
        self.smooth = regulariser(loss_cfg["regulariser"])
        self.dice = dice_loss()
        self.step = 0
        self.history = []
        # plateau bookkeeping; lr_drops: [{"step", "learning_rate"}] of each learning-rate drop
        self.best = {"val_dice": float("-inf"), "step": 0, "stale": 0, "lr_drops": []}
        self.train_seconds = 0.0  # over all runs of this training, resumes included
        self.devices = []  # where it trained, in order (a run resumed on another device adds one)
        self.stop_requested = False
        # frozen features of an image never change, unless its intensities are augmented
        augment = train_cfg["augment"]
        self.cache_features = not self.model.extractor.trainable and not augment["gamma"] and not augment["remap"]
        self._features = {}
        self.init = None  # train.init's checkpoint, as the card records it
        if resume and (self.out / "last.pt").is_file():
            self._resume(self.out / "last.pt")
        elif train_cfg["init"]:
            self._initialise(train_cfg["init"])

    # -- data -------------------------------------------------------------------------------
    def _image(self, record) -> torch.Tensor:
        return torch.from_numpy(record["image"].astype(np.float32))[None, None].to(self.device)

    def _labels(self, record) -> torch.Tensor | None:
        return None if record["labels"] is None else torch.from_numpy(record["labels"])[None, None].to(self.device)

    def _features_of(self, record) -> torch.Tensor:
        if not self.cache_features:
            return self.model.features(self._image(record))
        if record["id"] not in self._features:
            with torch.no_grad():
                self._features[record["id"]] = self.model.features(self._image(record))
        return self._features[record["id"]]

    # -- one step -----------------------------------------------------------------------------
    def _gamma(self, image: torch.Tensor) -> torch.Tensor:
        """Random intensity augmentation: ``image ** g`` with ``log g`` uniform in +-log(1 + gamma)."""
        amount = self.config["train"]["augment"]["gamma"]
        if not amount:
            return image
        return image.clamp(min=0) ** float(np.exp(self.rng.uniform(-1, 1) * np.log1p(amount)))

    def _remap(self, image: torch.Tensor) -> torch.Tensor:
        """With probability ``augment.remap``, a random contrast: intensities in [0, 1] through a
        piecewise-linear curve with :data:`REMAP_KNOTS` random values, sorted (monotone) or not
        (non-monotone: tissue order changes, as between T1, T2, PD and CT), 0 kept at 0."""
        if self.rng.uniform() >= self.config["train"]["augment"]["remap"]:
            return image
        values = self.rng.uniform(0.0, 1.0, REMAP_KNOTS)
        if self.rng.uniform() < 0.5:
            values = np.sort(values)
        values[0] = 0.0
        return random_remap(image, values)

    def _intensity(self, image: torch.Tensor) -> torch.Tensor:
        return self._remap(self._gamma(image))

    def losses(self, fixed, moving, theta=None, augment: bool = False) -> dict[str, torch.Tensor]:
        cfg = self.config["loss"]
        fixed_img, moving_img = self._image(fixed), self._image(moving)
        if augment and not self.cache_features:
            # the network sees the images under random contrasts; the loss compares the originals
            fixed_feat = self.model.features(self._intensity(fixed_img))
            moving_feat = self.model.features(self._intensity(moving_img))
        else:
            fixed_feat, moving_feat = self._features_of(fixed), self._features_of(moving)
        moving_lab = self._labels(moving)
        if theta is not None:
            theta = theta.to(self.device)
            moving_img = warp_affine(moving_img, theta)
            moving_feat = warp_affine(moving_feat, theta)
            if moving_lab is not None:
                moving_lab = warp_affine(moving_lab.float(), theta, mode="nearest").long()
        flow_ddf, _ = self.model.predict(fixed_feat, moving_feat)
        ddf = resize_field(flow_ddf, tuple(fixed_img.shape[2:]))
        warped = warp(moving_img, ddf)
        terms = {"similarity": self.similarity(warped, fixed_img), "smooth": self.smooth(ddf)}
        if cfg["dice_weight"] > 0 and moving_lab is not None and fixed["labels"] is not None:
            fixed_lab = self._labels(fixed)
            common = np.intersect1d(np.unique(fixed["labels"]), np.unique(moving_lab.cpu().numpy()))
            common = common[common > 0]
            pick = self.rng.choice(common, size=min(cfg["dice_labels"], common.size), replace=False)
            values = torch.from_numpy(np.sort(pick)).to(self.device)
            warped_onehot = warp(one_hot(moving_lab, values), ddf)
            terms["dice"] = self.dice(warped_onehot, one_hot(fixed_lab, values))
        else:
            terms["dice"] = torch.zeros((), device=self.device)
        terms["total"] = (
            terms["similarity"] + cfg["smooth_weight"] * terms["smooth"] + cfg["dice_weight"] * terms["dice"]
        )
        return terms

    def train_step(self) -> dict[str, float]:
        i, j = self.rng.choice(len(self.train_set), size=2, replace=False)
        augment = self.config["train"]["augment"]
        theta = random_affine_theta(self.rng, augment, self.train_set[j]["image"].shape)
        # drawn only when flipping is on, so that recipes without it keep their random streams
        subjects = self.mirrored_set if augment["flip"] and self.rng.uniform() < augment["flip"] else self.train_set
        self.model.train()
        self.optimiser.zero_grad()
        terms = self.losses(subjects[i], subjects[j], theta, augment=True)
        terms["total"].backward()
        self.optimiser.step()
        self.step += 1
        return {k: float(v.detach()) for k, v in terms.items()}

    # -- validation ---------------------------------------------------------------------------
    def validation_pairs(self) -> list[tuple[int, int]]:
        n = len(self.val_set)
        return [(k % n, (k + 1) % n) for k in range(min(self.config["train"]["val_pairs"], n))] if n > 1 else []

    def _warped_labels(self, moving, ddf: torch.Tensor) -> np.ndarray:
        return warp(self._labels(moving).float(), ddf, label=True)[0, 0].round().long().cpu().numpy()

    def validate(self) -> dict[str, float]:
        """Mean label Dice (fixed labels vs warped moving labels) over the validation pairs: affine
        only, the network alone and, with ``train.val_io_steps``, after instance optimisation."""
        self.model.eval()
        io_steps = self.config["train"]["val_io_steps"]
        scores = {"val_dice_affine": [], "val_dice": [], "val_dice_io": [], "val_folding_percent": []}
        for i, j in self.validation_pairs():
            fixed, moving = self.val_set[i], self.val_set[j]
            if fixed["labels"] is None or moving["labels"] is None:
                continue
            with torch.no_grad():
                flow_ddf, velocity = self.model.predict(self._features_of(fixed), self._features_of(moving))
                ddf = resize_field(flow_ddf, tuple(fixed["image"].shape))
                scores["val_dice_affine"].append(mean_dice(fixed["labels"], moving["labels"]))
                scores["val_dice"].append(mean_dice(fixed["labels"], self._warped_labels(moving, ddf)))
                scores["val_folding_percent"].append(jacobian_stats(ddf)["folding_percent"])
            if io_steps:
                options = InstanceOptOptions.schedule(io_steps)
                ddf = instance_optimise(
                    self.model, self._image(fixed), self._image(moving), flow_ddf, options, velocity=velocity
                )
                with torch.no_grad():
                    scores["val_dice_io"].append(mean_dice(fixed["labels"], self._warped_labels(moving, ddf)))
        self.model.train()
        return {k: float(np.mean(v)) for k, v in scores.items() if v}

    def _plateau(self, val_dice: float) -> bool:
        """Record a validation; True when ``train.plateau.patience`` validations in a row have not
        raised the best by ``min_delta`` (the best weights go to best.pt)."""
        plateau = self.config["train"]["plateau"]
        if val_dice > self.best["val_dice"] + plateau["min_delta"] or self.best["val_dice"] == float("-inf"):
            # in place: a new best restarts the count, the drops made so far still count towards the stop
            self.best.update(val_dice=val_dice, step=self.step, stale=0)
            weights = model_state(self.model)
            write_atomic(self.out / "best.pt", lambda tmp: torch.save(weights, tmp))
        else:
            self.best["stale"] += 1
        return self._stop_at_plateau()

    def _stop_at_plateau(self) -> bool:
        """True when the run must stop at a plateau; a plateau with learning-rate drops left
        drops the rate instead (``train.plateau.lr_drops``) and restarts the count."""
        plateau = self.config["train"]["plateau"]
        if not plateau["patience"] or self.best["stale"] < plateau["patience"]:
            return False
        drops = self.best.setdefault("lr_drops", [])
        if len(drops) >= plateau["lr_drops"]:
            return True
        for group in self.optimiser.param_groups:
            group["lr"] *= plateau["lr_factor"]
        drops.append({"step": self.step, "learning_rate": self.learning_rate})
        self.best["stale"] = 0
        self.log(
            f"plateau at step {self.step} (best {self.best['val_dice']:.4f} at step {self.best['step']}): "
            f"learning rate x {plateau['lr_factor']} -> {self.learning_rate:.3g} "
            f"(drop {len(drops)} of {plateau['lr_drops']})"
        )
        return False

    @property
    def learning_rate(self) -> float:
        return float(self.optimiser.param_groups[0]["lr"])

    # -- checkpoints --------------------------------------------------------------------------
    def _initialise(self, source: str) -> None:
        """Start from a trained checkpoint's weights (``train.init``), which must fit the recipe's
        model, or be the same model with fewer cascade stages: then each stage it lacks starts as a
        copy of its last stage (growing a cascade)."""
        path = DEFAULT_MODEL if source == "default" else Path(source)
        trained, payload = load_checkpoint(path)
        mine, theirs = architecture(self.model), architecture(trained)
        grown = theirs["cascade"] < mine["cascade"]
        if grown:  # the shared stages' tensors must match; the recipe's further stages are new
            theirs = {**theirs, "cascade": mine["cascade"]}
            mine = {**mine, "weights": {k: v for k, v in mine["weights"].items() if k in theirs["weights"]}}
        differ = [key for key in mine if mine[key] != theirs[key]]
        if differ:
            what = ", ".join(
                "layer shapes (model.channels or model.cascade)"
                if key == "weights"
                else f"{key} {theirs[key]} (the recipe: {mine[key]})"
                for key in differ
            )
            raise UniregError(f"train.init checkpoint does not fit the recipe's model: it has {what}", path=path)
        self.model.load_state_dict(model_state(trained), strict=False)
        stages, last = self.model.stage_modules(), trained.stage_modules()[-1]
        for stage in stages[trained.cascade :]:
            stage.load_state_dict(last.state_dict())
        seen = steps_seen(payload.get("model_card") or {})
        self.init = {"checkpoint": str(path), "sha256": payload["sha256"], "steps": seen}
        if grown:
            self.init["cascade"] = trained.cascade
        self.log(
            f"initialised from {path} ({seen if seen is not None else '?'} steps"
            + (
                f"; new stages {list(range(trained.cascade + 1, len(stages) + 1))} copy its stage {trained.cascade})"
                if grown
                else ")"
            )
        )

    def _resume(self, path: Path) -> None:
        state = torch.load(path, map_location="cpu", weights_only=False)
        self.model.load_state_dict(state["model"], strict=False)
        self.optimiser.load_state_dict(state["optimiser"])
        self.step = state["step"]
        self.history = state.get("history", [])
        self.best = state.get("best", self.best)
        self.train_seconds = state.get("train_seconds", 0.0)
        self.devices = state.get("devices", [])
        self.init = state.get("init")
        self.rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.log(f"resumed from {path} at step {self.step}")

    def save_last(self) -> None:
        state = {
            "model": self.model.state_dict(),
            "optimiser": self.optimiser.state_dict(),
            "step": self.step,
            "history": self.history,
            "best": self.best,
            "train_seconds": self.train_seconds,
            "devices": self.devices,
            "init": self.init,
            "numpy_rng": self.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None,
            "config": self.config,
        }
        write_atomic(self.out / "last.pt", lambda tmp: torch.save(state, tmp))

    def _device_name(self) -> str:
        if self.device.type == "cuda":
            return f"cuda ({torch.cuda.get_device_name(self.device)})"
        return str(self.device)

    def request_stop(self, *_) -> None:
        """Stop after the current step, with last.pt written (Ctrl-C, SIGTERM)."""
        self.stop_requested = True

    def _open_log(self):
        """log.csv holding exactly the steps up to ``self.step`` (rows a stopped run wrote after its
        last.pt are dropped), opened for appending."""
        path = self.out / "log.csv"
        kept = []
        if path.is_file() and self.step > 0:
            with open(path, newline="") as previous:
                kept = [r for r in csv.DictReader(previous) if int(r["step"]) <= self.step]
        fh = open(path, "w", newline="")
        writer = csv.DictWriter(fh, fieldnames=LOG_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(kept)
        return fh, writer

    def run(self, progress: bool = True) -> dict:
        cfg = self.config["train"]
        steps = cfg["steps"]
        from tqdm import tqdm

        bar = tqdm(total=steps, initial=self.step, disable=not progress, desc="train", unit="step")
        stopped = "plateau" if self._stop_at_plateau() else "max_steps"  # a finished run (or one given more drops)
        device = self._device_name()
        if self.step < steps and stopped == "max_steps" and device not in self.devices[-1:]:
            self.devices.append(device)
        fh, writer = self._open_log()
        with fh:
            if self.init and self.step == 0 and steps > 0:  # where a run from trained weights starts
                row = {"step": 0, **self.validate()}
                if "val_dice" in row:
                    self._plateau(row["val_dice"])
                writer.writerow(row)
                fh.flush()
                self.history.append(row)
            while self.step < steps and stopped == "max_steps":
                t0 = time.perf_counter()
                learning_rate = self.learning_rate
                row = self.train_step()
                row.update(step=self.step, seconds=round(time.perf_counter() - t0, 3), learning_rate=learning_rate)
                validated = self.step % cfg["validate_every"] == 0 or self.step == steps
                if validated:
                    row.update(self.validate())
                    if "val_dice" in row and self._plateau(row["val_dice"]):
                        stopped = "plateau"
                self.train_seconds += time.perf_counter() - t0
                writer.writerow(row)
                fh.flush()
                self.history.append(row)
                bar.set_postfix(loss=f"{row['total']:.3f}", dice=f"{row['dice']:.3f}")
                bar.update(1)
                if self.stop_requested:
                    stopped = "interrupted"
                if validated or self.stop_requested or self.step % cfg["checkpoint_every"] == 0:
                    self.save_last()
                if cfg["snapshot_every"] and self.step % cfg["snapshot_every"] == 0:
                    self.save_model(
                        self.out / "snapshots" / f"step_{self.step:06d}.pt",
                        self.card("snapshot", {k: row[k] for k in CURVE_FIELDS[1:] if k in row}, self.step),
                    )
                if stopped != "max_steps":
                    break
        bar.close()
        if stopped == "interrupted":
            self.log(f"stopped at step {self.step}: state in {self.out / 'last.pt'}; run the same command to resume")
            return {"steps": self.step, "stopped": "interrupted"}
        return self.finish(stopped)

    def finish(self, stopped: str) -> dict:
        """Ship the best validation weights as model.pt with its card and learning curve."""
        measured = [r for r in self.history if r["step"] == self.best["step"] and "val_dice" in r]
        if measured and (self.out / "best.pt").is_file():
            self.model.load_state_dict(torch.load(self.out / "best.pt", map_location=self.device), strict=False)
            final = {k: measured[0][k] for k in CURVE_FIELDS[1:] if k in measured[0]}  # measured at best_step
            weights_step = self.best["step"]
        else:
            final, weights_step = self.validate(), self.step
        card = self.card(stopped, final, weights_step)
        self.save_model(self.out / "model.pt", card)
        write_text_atomic(self.out / "model_card.json", json.dumps(card, indent=2) + "\n")
        write_learning_curve(card, self.out)
        return card

    def card(self, stopped: str, validation: dict, weights_step: int) -> dict:
        """The model card of the weights the model holds now: those of step ``weights_step`` (the
        card's ``best_step``), scored ``validation``."""
        curve = [{k: r[k] for k in CURVE_FIELDS if k in r} for r in self.history if "val_dice" in r]
        return {
            "unireg_version": __version__,
            "extractor": self.model.extractor.name,
            "extractor_weights_sha256": self.model.extractor.weights_sha256,
            "steps": self.step,
            "best_step": weights_step,
            "stopped": stopped,
            "stop_rule": self.config["train"]["plateau"],
            "learning_rate": self.config["train"]["learning_rate"],
            "lr_drops": self.best.get("lr_drops", []),
            "train_seconds": round(self.train_seconds, 1),
            "device": ", ".join(self.devices) or str(self.device),
            "seed": self.config["train"]["seed"],
            "init": self.init,
            "grid": {"shape": list(self.atlas.grid.shape), "spacing_mm": list(self.atlas.grid.spacing)},
            "atlas": self.atlas.path,
            "train_subjects": [r["id"] for r in self.train_set],
            "val_subjects": [r["id"] for r in self.val_set],
            "validation": validation,
            "learning_curve": curve,
            "normalisation": "percentile 0.5/99.5 in deepbet brain mask, [0, 1]"
            if self.config["preprocess"]["brain_extraction"]
            else "percentile 0.5/99.5 of non-zero voxels",
        }

    def save_model(self, path: Path, card: dict) -> None:
        save_checkpoint(
            path,
            self.model,
            self.config["model"],
            extra={"model_card": card, "grid": card["grid"], "train_config": self.config},
        )


def write_learning_curve(card: dict, out_dir: Path) -> None:
    """``model_card.md`` (the card's learning curve as a table) and ``learning_curve.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = card["learning_curve"]
    with_io = any("val_dice_io" in r for r in curve)

    def cell(row, key):
        return f"{row[key]:.4f}" if key in row else ""

    lines = [
        f"# Model card: {card['extractor']}, {card['steps']} steps",
        "",
        f"Stopped: {card['stopped']} (rule {card['stop_rule']}); shipped weights: step {card['best_step']} "
        f"(best validation Dice of the network alone); {card['train_seconds']:.0f} s of training on "
        f"{card['device']}; validation subjects {', '.join(card['val_subjects'])}."
        + (
            f" Started from {Path(card['init']['checkpoint']).name} (sha256 {card['init']['sha256'][:12]}, "
            f"{card['init']['steps']} steps"
            + (
                f", a cascade of {card['init']['cascade']} grown by copies of its last stage"
                if card["init"].get("cascade")
                else ""
            )
            + "): step 0 is its validation."
            if card.get("init")
            else ""
        )
        + "".join(
            f" Learning rate x {card['stop_rule']['lr_factor']} at step {d['step']} (to {d['learning_rate']:.3g})."
            for d in card.get("lr_drops", [])
        ),
        "",
        "| step | affine | network alone | network + IO | folding % |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['step']} | {cell(r, 'val_dice_affine')} | {cell(r, 'val_dice')} | {cell(r, 'val_dice_io')} | "
        f"{cell(r, 'val_folding_percent')} |"
        for r in curve
    ]
    write_text_atomic(out_dir / "model_card.md", "\n".join(lines) + "\n\n![learning curve](learning_curve.png)\n")
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    steps = [r["step"] for r in curve]
    for key, label in (("val_dice", "network alone"), ("val_dice_io", "network + IO"), ("val_dice_affine", "affine")):
        if key != "val_dice_io" or with_io:
            ax.plot(steps, [r.get(key, float("nan")) for r in curve], marker="o", label=label)
    ax.axvline(card["best_step"], color="grey", linestyle=":", label="shipped weights")
    for k, drop in enumerate(card.get("lr_drops", [])):
        ax.axvline(drop["step"], color="tab:red", linestyle="--", label="learning rate drop" if k == 0 else None)
    ax.set_xlabel("step")
    ax.set_ylabel("validation mean Dice")
    ax.legend(loc="lower right")
    fig.tight_layout()
    write_atomic(out_dir / "learning_curve.png", lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


def train(config_path: str | Path, resume: bool = True, progress: bool = True, finish: bool = False) -> dict:
    """Run (or resume) a training; Ctrl-C and SIGTERM stop it after the current step, resumable.

    ``finish``: train no further; ship a stopped run (its ``last.pt``) as it stands: model.pt from
    its best validation weights, with the card and learning curve (``stopped: "finished"``)."""
    trainer = Trainer(load_config(config_path), resume=resume)
    if finish:
        if not trainer.step:
            raise UniregError("nothing to finish: no last.pt of a stopped run", path=trainer.out)
        return trainer.finish("finished")
    previous = {sig: signal.signal(sig, trainer.request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return trainer.run(progress=progress)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
