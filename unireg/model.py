"""The UniReg network and its checkpoints: frozen features -> small UNet -> velocity -> diffeomorphic
displacement.

:class:`UniRegNet`: ``extractor(fixed)``, ``extractor(moving)`` -> concatenation -> MONAI
``UNet`` -> velocity at the *flow grid* (``flow_stride`` times coarser than the image) ->
integration by scaling and squaring -> trilinear upsampling to the image grid. With ``cascade`` =
n > 1, n - 1 further UNets (own weights) each see the fixed features and the moving features
warped by the field so far, and predict a residual diffeomorphism composed onto it (a recursive
cascade: the composition of diffeomorphisms is one). The field algebra
(warping, integration, resizing, Jacobians) and the displacement convention are those of
:mod:`unireg.fields`; saved NIfTI fields are converted to world millimetres by
:mod:`unireg.register`.

Checkpoints (:func:`save_checkpoint`, :func:`load_checkpoint`) carry everything needed to
rebuild the model and check it is the one that was trained.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F
from monai.networks.nets import UNet

from . import __version__
from .errors import UniregError
from .features import FeatureExtractor, build_extractor
from .fields import INTEGRATION_STEPS, integrate, mirror_field, resize_field, warp
from .io import write_atomic, write_text_atomic
from .weights import sha256_file


class UniRegNet(torch.nn.Module):
    """Predict a diffeomorphic displacement from frozen features of the fixed and moving images.

    Args:
        extractor: a :class:`unireg.features.FeatureExtractor` (frozen, or ``scratch``).
        channels: UNet channels per level (MONAI ``UNet``); strides are 2 between levels.
        flow_stride: the velocity is predicted and integrated on a grid this many times coarser
            than the image grid (features are resized to it), then upsampled.
        int_steps: scaling-and-squaring steps.
        cascade: number of UNets in the recursive cascade (1: one UNet, the original network).
    """

    def __init__(
        self,
        extractor: FeatureExtractor,
        channels: tuple[int, ...] = (16, 32, 32, 32),
        flow_stride: int = 2,
        int_steps: int = INTEGRATION_STEPS,
        cascade: int = 1,
    ):
        super().__init__()
        if cascade < 1:
            raise UniregError(f"model cascade must be at least 1 (got {cascade})")
        self.extractor = extractor
        self.flow_stride = flow_stride
        self.int_steps = int_steps
        self.cascade = cascade
        self.unet, self.flow = self._stage(extractor.out_channels, tuple(channels))
        # the further stages of the cascade, each (UNet, flow head); none for cascade = 1 (so the
        # checkpoints of one-stage models keep their keys)
        self.refine = torch.nn.ModuleList(
            torch.nn.Sequential(*self._stage(extractor.out_channels, tuple(channels))) for _ in range(cascade - 1)
        )

    @staticmethod
    def _stage(feature_channels: int, channels: tuple[int, ...]) -> tuple[torch.nn.Module, torch.nn.Module]:
        unet = UNet(
            spatial_dims=3,
            in_channels=2 * feature_channels,
            out_channels=channels[0],
            channels=channels,
            strides=(2,) * (len(channels) - 1),
            num_res_units=1,
            act=("LeakyReLU", {"negative_slope": 0.2}),
            norm="instance",
        )
        # voxelmorph-style flow head, initialised near zero so training starts at the identity
        flow = torch.nn.Sequential(torch.nn.LeakyReLU(0.2), torch.nn.Conv3d(channels[0], 3, 3, padding=1))
        torch.nn.init.normal_(flow[1].weight, std=1e-5)
        torch.nn.init.zeros_(flow[1].bias)
        return unet, flow

    def stage_modules(self) -> list[torch.nn.Module]:
        """The modules of each cascade stage, in order: the first stage's UNet and flow head, then
        each refining stage. All have the same state-dict keys (``0.``: UNet, ``1.``: flow head),
        so one stage's weights load into another of the same channels."""
        return [torch.nn.ModuleList([self.unet, self.flow]), *self.refine]

    def flow_shape(self, image_shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(s // self.flow_stride for s in image_shape)

    def features(self, image: torch.Tensor) -> torch.Tensor:
        """Extractor features of ``(B, 1, D, H, W)`` images resized to the flow grid."""
        feats = self.extractor(image)
        shape = self.flow_shape(image.shape[2:])
        if tuple(feats.shape[2:]) != shape:
            # feature maps of strided layers are cell-centred (a feature covers stride**2 voxels):
            # resized as images, not as fields (fields.ALIGN_CORNERS is for voxel-centred grids)
            feats = F.interpolate(feats, size=shape, mode="trilinear", align_corners=False)
        return feats

    def velocity(self, fixed_features: torch.Tensor, moving_features: torch.Tensor) -> torch.Tensor:
        """Stationary velocity of the first stage on the flow grid, in flow-grid voxels."""
        return self.flow(self.unet(torch.cat([fixed_features, moving_features], dim=1)))

    def predict(
        self, fixed_features: torch.Tensor, moving_features: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(displacement, velocity)`` on the flow grid (flow-grid voxels): the displacement of
        the whole cascade and, for a one-stage network, the stationary velocity it integrates
        (``None`` for a cascade, whose field is a composition, not one velocity's exponential).

        Stage k > 1 compares the fixed features with the moving features warped by the field of
        stages 1..k-1 (``D``) and predicts a velocity whose exponential ``d`` is composed onto it:
        ``D <- d + D o (id + d)``.
        """
        velocity = self.velocity(fixed_features, moving_features)
        ddf = integrate(velocity, self.int_steps)
        for stage in self.refine:
            step = integrate(stage(torch.cat([fixed_features, warp(moving_features, ddf)], dim=1)), self.int_steps)
            ddf = step + warp(ddf, step)
        return ddf, (velocity if self.cascade == 1 else None)

    def predict_images(
        self, fixed: torch.Tensor, moving: torch.Tensor, mirror_axis: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`predict` from ``(B, 1, D, H, W)`` images. With ``mirror_axis`` (test-time
        mirroring), the mean of that prediction and the prediction for both images mirrored along
        that voxel axis, mirrored back: velocities are averaged before integration (the result stays
        a diffeomorphism), a cascade's displacements directly. The mean is exactly mirror-equivariant,
        which the network alone is not; along the left-right axis (anatomy is nearly symmetric) it
        raises Dice (``benchmarks/results/peers_mind_cascade2_8500_mirror.md`` against
        ``peers_mind_cascade2_8500.md``)."""
        ddf, velocity = self.predict(self.features(fixed), self.features(moving))
        if mirror_axis is None:
            return ddf, velocity
        dims = (2 + mirror_axis,)
        other_ddf, other_velocity = self.predict(
            self.features(torch.flip(fixed, dims)), self.features(torch.flip(moving, dims))
        )
        if velocity is not None:
            velocity = 0.5 * (velocity + mirror_field(other_velocity, mirror_axis))
            return integrate(velocity, self.int_steps), velocity
        return 0.5 * (ddf + mirror_field(other_ddf, mirror_axis)), None

    def displacement(self, velocity: torch.Tensor, image_shape: tuple[int, ...]) -> torch.Tensor:
        """Integrate a flow-grid velocity and upsample to ``image_shape`` (image voxels)."""
        return resize_field(integrate(velocity, self.int_steps), tuple(image_shape))

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        """``(B, 1, D, H, W)`` fixed and moving -> displacement ``(B, 3, D, H, W)`` on the fixed grid."""
        ddf, _ = self.predict(self.features(fixed), self.features(moving))
        return resize_field(ddf, tuple(fixed.shape[2:]))


# ---------------------------------------------------------------------------------------------
# Checkpoints: everything needed to rebuild the model and check it is the one that was trained
# ---------------------------------------------------------------------------------------------

CHECKPOINT_FORMAT = "unireg-checkpoint-1"
MODELS_DIR = Path(__file__).resolve().parent / "data" / "models"
DEFAULT_MODEL = MODELS_DIR / "unireg_mind.pt"


def build_model(config: dict) -> UniRegNet:
    """A model from a checkpoint's ``config`` (``extractor``, ``channels``, ``flow_stride``, ``int_steps``,
    ``cascade``)."""
    extractor = build_extractor(config["extractor"], config.get("extractor_weights"))
    return UniRegNet(
        extractor,
        channels=tuple(config.get("channels", (16, 32, 32, 32))),
        flow_stride=int(config.get("flow_stride", 2)),
        int_steps=int(config.get("int_steps", INTEGRATION_STEPS)),
        cascade=int(config.get("cascade", 1)),
    )


def model_state(model: UniRegNet) -> dict:
    """Trainable weights only: a frozen extractor is rebuilt from its own (hashed) weight file."""
    return {k: v for k, v in model.state_dict().items() if model.extractor.trainable or not k.startswith("extractor.")}


def architecture(model: UniRegNet) -> dict:
    """What two models must share for one's trained weights to be the other's: extractor (and its
    weights), flow grid, integration, cascade, and every trainable tensor's shape."""
    return {
        "extractor": model.extractor.name,
        "extractor_weights_sha256": model.extractor.weights_sha256,
        "flow_stride": model.flow_stride,
        "int_steps": model.int_steps,
        "cascade": model.cascade,
        "weights": {k: tuple(v.shape) for k, v in model_state(model).items()},
    }


def save_checkpoint(path: str | Path, model: UniRegNet, config: dict, extra: dict | None = None) -> Path:
    """Write a checkpoint atomically, plus ``<path>.sha256`` that :func:`load_checkpoint` verifies."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "unireg_version": __version__,
        "config": dict(config),
        "extractor": model.extractor.name,
        "extractor_weights_sha256": model.extractor.weights_sha256,
        "state_dict": model_state(model),
        **(extra or {}),
    }
    write_atomic(path, lambda tmp: torch.save(payload, tmp))
    write_text_atomic(path.with_name(path.name + ".sha256"), f"{sha256_file(path)}  {path.name}\n")
    return path


def load_checkpoint(path: str | Path | None = None, device: str | torch.device = "cpu") -> tuple[UniRegNet, dict]:
    """Rebuild a trained model (default: the packaged one), verified by sha256, in eval mode.

    The checkpoint's bytes must match the hash in ``<path>.sha256`` (written by
    :func:`save_checkpoint`; a checkpoint without one is refused), and its frozen extractor's
    weight file must be the one it was trained on (``extractor_weights_sha256``). The returned
    payload carries the verified digest as ``sha256``.
    """
    path = Path(path) if path is not None else DEFAULT_MODEL
    if not path.is_file():
        raise UniregError("model checkpoint not found", path=path)
    digest_file = path.with_name(path.name + ".sha256")
    if not digest_file.is_file():
        raise UniregError(
            f"checkpoint has no {digest_file.name} beside it, so its integrity cannot be checked; "
            + (
                "reinstall unireg"
                if path.parent == MODELS_DIR
                else "copy that file along with the checkpoint ('unireg train' writes both)"
            ),
            path=path,
        )
    fields = digest_file.read_text(errors="replace").split()
    expected = fields[0].lower() if fields else ""
    if not re.fullmatch(r"[0-9a-f]{64}", expected):
        raise UniregError(
            f"{digest_file.name} holds no sha256 (64 hex digits); copy it again along with the checkpoint", path=path
        )
    if sha256_file(path) != expected:
        raise UniregError(
            f"checkpoint sha256 does not match {digest_file.name}: the file is corrupted "
            "or was replaced; re-copy or retrain it",
            path=path,
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise UniregError(f"cannot read model checkpoint ({type(exc).__name__})", path=path) from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise UniregError(f"not a unireg checkpoint (expected format {CHECKPOINT_FORMAT})", path=path)
    model = build_model(payload["config"])
    if model.extractor.weights_sha256 != payload.get("extractor_weights_sha256"):
        raise UniregError(
            f"the {model.extractor.name} weights found here (sha256 "
            f"{str(model.extractor.weights_sha256)[:12]}) are not those the model was trained on "
            f"({str(payload.get('extractor_weights_sha256'))[:12]})",
            path=path,
        )
    missing, unexpected = model.load_state_dict(payload["state_dict"], strict=False)
    missing = [k for k in missing if model.extractor.trainable or not k.startswith("extractor.")]
    if missing or unexpected:
        raise UniregError(
            f"checkpoint does not fit its model: missing {missing[:3]}, unexpected {unexpected[:3]}", path=path
        )
    model.eval()
    payload["sha256"] = expected  # the file's, as verified above
    return model.to(device), payload


# loaded_checkpoint's models: (path, size, mtime, device) -> (model, checkpoint)
_LOADED: dict[tuple, tuple[UniRegNet, dict]] = {}


def loaded_checkpoint(path: str | Path | None = None, device: str | torch.device = "cpu") -> tuple[UniRegNet, dict]:
    """:func:`load_checkpoint`, once per process: a batch of registrations (``unireg batch``) loads
    and verifies the model for its first member only. The file's size and modification time are
    part of the key, so a replaced checkpoint is loaded (and verified) again. Registration never
    changes the model's weights (instance optimisation refines the displacement)."""
    resolved = (Path(path) if path is not None else DEFAULT_MODEL).resolve()
    try:
        stat = resolved.stat()
    except OSError:
        return load_checkpoint(path, device)  # its clear error
    key = (str(resolved), stat.st_size, stat.st_mtime_ns, str(device))
    if key not in _LOADED:
        _LOADED[key] = load_checkpoint(path, device)
    return _LOADED[key]
