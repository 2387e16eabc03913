"""One loader for every kind of depth model d3epth can run: ``load_predictor(source) -> DepthPredictor``.

Sources (detected from the path):

* a d3epth task checkpoint (``.ckpt`` of any stage), recognised by the capability of the task its ``d3epth_task``
  marker names (:data:`d3epth.checkpoints.TASKS`). A student checkpoint (stage 1, stage 2, baseline) becomes the same
  image → depth network as an exported student, a :class:`~d3epth.models.depth_model.StudentDepthModel`: the
  ``DepthStudent`` its ``student`` hyper-parameter describes with its ``student.*`` weights, plus the teacher's VAE
  decoder when its pixel decoder is ``vae`` (stage 1 always). A teacher checkpoint becomes a diffusion predictor
  (below), rebuilt from the architecture stored in it;
* an exported student directory (``config.json`` + ``model.safetensors``, :mod:`d3epth.models.export`);
* a diffusers Marigold / E2E-FT depth directory (``model_index.json``, ``unet/``, ``vae/``, ``scheduler/``), run by
  :meth:`~d3epth.models.teacher.DiffusionDepthTeacher.predict_depth` — by default E2E-FT's setting: one DDIM step at
  t = 999 (trailing spacing) from zero noise, no ensemble.

Every predictor maps RGB ``[B,3,H,W]`` in [−1, 1] to affine-invariant depth ``[B,1,H,W]`` (larger = farther,
unknown scale and shift) at the input resolution, optionally processing at a smaller resolution first. This is what
``tools/predict.py`` and ``tools/evaluate.py`` use.

Loading an exported student or a diffusers directory imports no Lightning: the task modules (:mod:`d3epth.tasks`)
are imported only where a task itself is rebuilt (:func:`load_task`) or a teacher checkpoint is read.
"""

from __future__ import annotations

import functools
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from d3epth.checkpoints import (
    AUTOENCODER,
    STUDENT,
    TASK_KEY,
    TASKS,
    TEACHER,
    load_task_checkpoint,
    resolve_run_checkpoint,
    student_state_dict,
    tasks_with,
)
from d3epth.errors import CheckpointError
from d3epth.inference.sizing import SizeRule, max_edge_size, processing_size, resize_bilinear
from d3epth.models.depth_model import StudentDepthModel
from d3epth.models.export import is_exported_student, load_student
from d3epth.models.student import DepthStudent, architecture_arguments
from d3epth.models.teacher import DiffusionDepthTeacher, load_teacher

if TYPE_CHECKING:  # Lightning: imported only when a task is rebuilt
    from d3epth.tasks.base import DepthTask

__all__ = [
    "DepthPredictor",
    "ModuleDepthPredictor",
    "TeacherDepthPredictor",
    "load_predictor",
    "load_student_checkpoint",
    "load_task",
    "max_edge_size",
    "processing_size",
    "resize_bilinear",
    "student_model_from_task",
]


class DepthPredictor(nn.Module):
    """Image → affine-invariant depth, whatever model is inside.

    Subclasses implement :meth:`_predict` at the size they are given; :meth:`predict` adds input checks, the
    optional processing resolution and the resize back. Being an ``nn.Module``, ``to(device)`` moves the model.

    Attributes:
        name: short label (for logs and result tables).
        kind: ``"depth"`` (larger = farther) or ``"disparity"``; every d3epth model predicts depth.
        source: the path the model was loaded from.
        processing_resolution: default longer side to process at; ``None`` or 0 = the input resolution.
        size_multiple: sizes that are multiples of this need no internal padding.
        output_antialias: whether a prediction made larger than its image is shrunk back with antialiasing
            (:func:`~d3epth.inference.sizing.resize_bilinear`); ``tools/predict.py`` resizes its outputs alike.
    """

    kind: str = "depth"
    output_antialias: bool = True

    def __init__(
        self, name: str, source: str = "", processing_resolution: int | None = None, size_multiple: int = 1
    ) -> None:
        super().__init__()
        self.name = name
        self.source = source
        self.processing_resolution = processing_resolution
        self.size_multiple = size_multiple

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters (CPU for a parameter-free model)."""
        for parameter in self.parameters():
            return parameter.device
        return torch.device("cpu")

    def _predict(self, image: Tensor) -> Tensor:
        """Depth ``[B,1,h,w]`` for ``image`` ``[B,3,h,w]`` on the model's device, at the given size."""
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, image: Tensor, processing_resolution: int | None = None) -> Tensor:
        """Affine-invariant depth for a batch of images.

        Args:
            image: RGB ``[B,3,H,W]`` in [−1, 1] (any device; moved to the model's).
            processing_resolution: longer side to process at (resized with antialiasing, both sides rounded to
                :attr:`size_multiple`, see :func:`processing_size`), the prediction being resized back to ``H × W``
                (bilinear); ``None`` = :attr:`processing_resolution`, 0 = the input resolution.

        Returns:
            float32 ``[B,1,H,W]`` on the model's device, larger = farther.
        """
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"{self.name}: images must be [B, 3, H, W] in [-1, 1], got shape {tuple(image.shape)}")
        resolution = self.processing_resolution if processing_resolution is None else processing_resolution
        image = image.to(self.device, torch.float32)
        size = (image.shape[-2], image.shape[-1])
        rule = self.size_rule(resolution)
        work = resize_bilinear(image, rule(*size)) if rule is not None else image
        return resize_bilinear(self._predict(work).float(), size)

    def size_rule(self, resolution: int | None) -> SizeRule | None:
        """How an image is sized for processing at ``resolution`` (:func:`processing_size` at :attr:`size_multiple`).

        A picklable function (DataLoader workers size images with it while decoding); ``None`` for 0 / ``None``, the
        input resolution.
        """
        if not resolution:
            return None
        return functools.partial(processing_size, resolution=int(resolution), multiple=self.size_multiple)

    def forward(self, image: Tensor) -> Tensor:
        """Same as :meth:`predict` at the default processing resolution."""
        return self.predict(image)

    def extra_repr(self) -> str:
        """Show the source and kind in ``print(predictor)``."""
        return f"name={self.name!r}, kind={self.kind!r}, source={self.source!r}"


class ModuleDepthPredictor(DepthPredictor):
    """Wrap any ``nn.Module`` image → depth (e.g. a :class:`~d3epth.models.depth_model.StudentDepthModel`)."""

    def __init__(self, model: nn.Module, name: str, source: str = "", processing_resolution: int | None = None) -> None:
        super().__init__(name, source, processing_resolution, int(getattr(model, "size_multiple", 1)))
        self.model = model.eval()

    def _predict(self, image: Tensor) -> Tensor:
        return self.model(image)


class TeacherDepthPredictor(DepthPredictor):
    """A diffusion depth model (Marigold / E2E-FT / a trained ``TeacherTask``) through ``predict_depth``.

    Resizing is the teacher's own (Marigold's: longer edge = processing resolution, antialiased, replicate-padded to a
    multiple of 8, resized back without antialiasing, its ``is_aa=False``), so results match
    ``MarigoldDepthPipeline``.

    Args:
        teacher: the diffusion model.
        num_steps: DDIM steps (1 = E2E-FT / Marigold v1-1 single step at t = 999).
        ensemble_size: predictions per image, combined by Marigold's affine-aligned median (needs Gaussian noise).
        processing_resolution: default longer edge; ``None`` / 0 = native.
        seed: seed of the initial noise when ``ensemble_size > 1``, reseeded for every image, so an image's depth
            does not depend on the batch or its position in it.
        batch_size: UNet / VAE batch size inside one call (default: all at once).
    """

    output_antialias = False  # Marigold's pipeline resizes its prediction back with is_aa=False

    def __init__(
        self,
        teacher: DiffusionDepthTeacher,
        name: str,
        source: str = "",
        num_steps: int = 1,
        ensemble_size: int = 1,
        processing_resolution: int | None = None,
        seed: int = 0,
        batch_size: int | None = None,
    ) -> None:
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        if ensemble_size < 1:
            raise ValueError(f"ensemble_size must be >= 1, got {ensemble_size}")
        super().__init__(name, source, processing_resolution, teacher.vae_scale_factor)
        self.teacher = teacher.freeze()
        self.num_steps = num_steps
        self.ensemble_size = ensemble_size
        self.seed = seed
        self.batch_size = batch_size
        #: autocast dtype of the UNet / VAE calls (float32: none); set by ``accelerate_predictor``.
        self.autocast_dtype = torch.float32

    def size_rule(self, resolution: int | None) -> SizeRule | None:
        """Marigold's sizing (:func:`max_edge_size`): the teacher pads to its multiple itself."""
        return functools.partial(max_edge_size, resolution=int(resolution)) if resolution else None

    @torch.no_grad()
    def predict(self, image: Tensor, processing_resolution: int | None = None) -> Tensor:
        """Depth in [0, 1] (0 = near) at the input resolution; see :meth:`DepthPredictor.predict`."""
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"{self.name}: images must be [B, 3, H, W] in [-1, 1], got shape {tuple(image.shape)}")
        resolution = self.processing_resolution if processing_resolution is None else processing_resolution
        gaussian = self.ensemble_size > 1
        # With an ensemble, each image draws its members' noise from its own generator seeded with ``seed``, so its
        # depth does not depend on the batch it came in (one noise tensor for the batch would differ by position).
        images = image.to(self.device).split(1) if gaussian else [image.to(self.device)]
        low = self.autocast_dtype != torch.float32
        depths = []
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=low):
            for chunk in images:
                prediction = self.teacher.predict_depth(
                    chunk,
                    num_steps=self.num_steps,
                    ensemble_size=self.ensemble_size,
                    processing_resolution=resolution or None,
                    batch_size=self.batch_size,
                    generator=torch.Generator("cpu").manual_seed(self.seed) if gaussian else None,
                    init_noise="gaussian" if gaussian else "zeros",
                )
                depths.append(prediction.depth.float())
        return torch.cat(depths)


# ----------------------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------------------


def _pixel_decoder(hparams: dict[str, Any]) -> str:
    """``"light"`` or ``"vae"``: a student task's ``pixel_decoder`` (stage 1, which has none, decodes with the VAE)."""
    return str(hparams.get("pixel_decoder", "vae"))


def load_task(
    path: str | Path,
    accepted: tuple[str, ...] | None = None,
    teacher: str | Path | dict[str, Any] | None = None,
    purpose: str = "model",
) -> DepthTask:
    """Rebuild a d3epth task from its checkpoint (Lightning's ``load_from_checkpoint``), on the CPU, in eval mode.

    Arguments that only matter for training are switched off so that nothing but the model itself is needed:
    ``init_from`` (the stage-1 checkpoint a stage-2 run started from; its weights are in this checkpoint anyway) and,
    for a stage-2 student with the light decoder, the teacher (used only to fit the light head while training).
    For inference, :func:`load_student_checkpoint` builds the student network alone, without the task.

    Args:
        path: the ``.ckpt`` file.
        accepted: task names allowed here (default: the tasks holding a student, ``tasks_with(STUDENT)``).
        teacher: replaces the teacher source stored in the checkpoint (e.g. a teacher directory that has moved).
        purpose: named in error messages.

    Raises:
        FileNotFoundError: no such checkpoint, or the teacher source it names is gone.
        ValueError: not a d3epth checkpoint, or one of another task.
    """
    from d3epth.tasks.registry import task_class  # Lightning

    path = Path(path)
    checkpoint = load_task_checkpoint(path, accepted or tasks_with(STUDENT), purpose)
    name = checkpoint[TASK_KEY]
    hparams = dict(checkpoint.get("hyper_parameters") or {})
    del checkpoint
    overrides: dict[str, Any] = {}
    if hparams.get("init_from") is not None:
        overrides["init_from"] = None
    if isinstance(hparams.get("student"), dict):  # the weights are the checkpoint's, not an ImageNet file's
        overrides["student"] = architecture_arguments(hparams["student"])
    if hparams.get("pixel_decoder") == "light":
        overrides.update(teacher=None, fit_light_to_vae_steps=0)
    elif teacher is not None and "teacher" in hparams:
        overrides["teacher"] = str(teacher) if isinstance(teacher, Path) else teacher
    try:
        task = task_class(name).load_from_checkpoint(path, map_location="cpu", weights_only=True, **overrides)
    except FileNotFoundError as err:
        raise _missing_teacher(purpose, name, path, hparams, err) from err
    task.use_ema_weights()  # inference runs the averaged student when the task kept one
    return task.eval()


def _missing_teacher(
    purpose: str, name: str, path: Path, hparams: dict[str, Any], err: FileNotFoundError
) -> FileNotFoundError:
    return FileNotFoundError(
        f"{purpose}: cannot rebuild the {name} in {path}: {err}. Its teacher source (hyper_parameters.teacher = "
        f"{hparams.get('teacher')!r}) must exist; point to it with teacher=... (tools: --teacher)"
    )


def student_model_from_task(task: DepthTask) -> tuple[StudentDepthModel, dict[str, Any]]:
    """The image → depth student network of a stage-1 / stage-2 task and its ``DepthStudent`` arguments.

    Stage 1 (``LatentDistillationTask``) and stage 2 with ``pixel_decoder: vae`` decode the student's latent with the
    teacher's VAE decoder, which therefore comes along; stage 2 with ``light`` is the student alone.
    """
    student = getattr(task, "student", None)
    if student is None:
        raise ValueError(f"a {type(task).__name__} holds no student network")
    vae = task.teacher.vae if _pixel_decoder(task.hparams) == "vae" else None
    return StudentDepthModel(student, vae).eval(), dict(task.hparams["student"])


def _student_model(
    checkpoint: dict[str, Any], path: Path, teacher: str | Path | dict[str, Any] | None, purpose: str
) -> tuple[StudentDepthModel, dict[str, Any]]:
    """:func:`load_student_checkpoint` on a checkpoint dict already read from ``path``."""
    name = checkpoint[TASK_KEY]
    hparams = dict(checkpoint.get("hyper_parameters") or {})
    kwargs = hparams.get("student")
    if not kwargs:
        raise CheckpointError(f"{purpose}: {path} ({name}) has no 'student' hyper-parameter to rebuild its student")
    kwargs = architecture_arguments(kwargs)
    student = DepthStudent(**kwargs)
    try:
        student.load_state_dict(student_state_dict(checkpoint))  # the EMA weights when the task kept them
    except RuntimeError as err:
        raise CheckpointError(
            f"{purpose}: {path} ({name}) does not match the student its hyper-parameters describe: {err}"
        ) from err
    vae = None
    if _pixel_decoder(hparams) == "vae":
        source = teacher if teacher is not None else hparams.get("teacher")
        try:
            vae = load_teacher(source).vae
        except FileNotFoundError as err:
            raise _missing_teacher(purpose, name, path, hparams, err) from err
    return StudentDepthModel(student, vae).eval(), kwargs


def load_student_checkpoint(
    path: str | Path, teacher: str | Path | dict[str, Any] | None = None, purpose: str = "model"
) -> tuple[StudentDepthModel, dict[str, Any], str]:
    """The image → depth network of a student task checkpoint (stage 1, stage 2, baseline), without the task.

    The ``DepthStudent`` is built from the checkpoint's ``student`` hyper-parameter (the arguments the task actually
    used) with its ``student.*`` weights; when the task's pixel decoder is ``vae`` (stage 1 always) the teacher is
    rebuilt from its source and its VAE decodes the student's latent. The result computes what the task's own
    ``predict_depth`` computes, and is what :func:`d3epth.models.export.save_student` writes.

    Args:
        path: the ``.ckpt`` file.
        teacher: replaces the teacher source stored in the checkpoint (e.g. a teacher directory that has moved).
        purpose: named in error messages.

    Returns:
        The network (CPU, eval mode), its ``DepthStudent`` arguments and the task name.

    Raises:
        FileNotFoundError: no such checkpoint, or the teacher source it names is gone.
        ValueError: not a d3epth checkpoint, one of a task without a student, or weights that do not fit.
    """
    path = Path(path)
    checkpoint = load_task_checkpoint(path, tasks_with(STUDENT), purpose)
    model, kwargs = _student_model(checkpoint, path, teacher, purpose)
    return model, kwargs, checkpoint[TASK_KEY]


def _label(path: Path) -> str:
    """Short name: the last parts of the path without ``checkpoints/`` and the suffix (``stage2/version_0/last``)."""
    parts = [p for p in path.with_suffix("").parts if p not in ("checkpoints", "/")]
    return "/".join(parts[-3:]) if path.is_file() else path.name


def _diffusers_depth_dir(path: Path) -> bool:
    """Whether ``path`` looks like a diffusers Marigold / E2E-FT depth directory; raises for a non-depth one."""
    if not ((path / "unet").is_dir() and (path / "vae").is_dir() and (path / "scheduler").is_dir()):
        return False
    index = path / "model_index.json"
    if index.is_file():
        class_name = str(json.loads(index.read_text()).get("_class_name", ""))
        if "Normals" in class_name or "Intrinsics" in class_name:
            raise ValueError(f"{path} holds a {class_name}, not a depth model")
    unet_config = path / "unet" / "config.json"
    if unet_config.is_file() and json.loads(unet_config.read_text()).get("in_channels") == 4:
        raise ValueError(
            f"{path} is a Stable Diffusion (4-channel UNet) directory, not a Marigold / E2E-FT depth model: it has "
            "never been trained for depth (use it as a teacher initialisation for tools/fit.py instead)"
        )
    return True


def _default_processing_resolution(path: Path) -> int | None:
    """``default_processing_resolution`` from a Marigold directory's ``model_index.json`` (as the pipeline uses)."""
    index = path / "model_index.json"
    if not index.is_file():
        return None
    value = json.loads(index.read_text()).get("default_processing_resolution")
    return int(value) if value else None


def load_predictor(
    source: str | Path,
    device: str | torch.device | None = None,
    *,
    num_steps: int = 1,
    ensemble_size: int = 1,
    processing_resolution: int | None = None,
    seed: int = 0,
    teacher: str | Path | dict[str, Any] | None = None,
    batch_size: int | None = None,
) -> DepthPredictor:
    """Load any d3epth-runnable depth model as a :class:`DepthPredictor` (see the module docstring for sources).

    Args:
        source: a task ``.ckpt``, an exported student directory, or a diffusers Marigold / E2E-FT directory.
        device: where to put the model (``None`` = CPU).
        num_steps: diffusion models: DDIM steps (1 = E2E-FT setting, trailing spacing from t = 999).
        ensemble_size: diffusion models: ensemble members per image (> 1 uses Gaussian initial noise from ``seed``).
        processing_resolution: default longer side to process at; ``None`` = the model's default (a Marigold
            directory's ``default_processing_resolution``, else native), 0 = native.
        seed: diffusion models: seed of the ensemble's initial noise.
        teacher: replaces the teacher source stored in a stage-1 / stage-2 (``vae``) checkpoint.
        batch_size: diffusion models: UNet / VAE batch size inside one call.

    Returns:
        The predictor, in eval mode, on ``device``.

    Raises:
        FileNotFoundError: ``source`` does not exist (or a file it refers to is missing).
        ValueError: a file that is not a d3epth checkpoint of a depth task, or a directory that is neither an exported
            student nor a diffusers depth model.
    """
    path = Path(source).expanduser()
    teacher_options = {"num_steps": num_steps, "ensemble_size": ensemble_size, "seed": seed, "batch_size": batch_size}
    if not path.exists():
        raise FileNotFoundError(f"model source not found: {path}")
    path = resolve_run_checkpoint(path, "model source")  # a run directory: its latest completed last.ckpt
    predictor: DepthPredictor
    if path.is_dir():
        if is_exported_student(path):
            predictor = ModuleDepthPredictor(load_student(path), _label(path), str(path), processing_resolution)
        elif _diffusers_depth_dir(path):
            default = _default_processing_resolution(path)
            predictor = TeacherDepthPredictor(
                DiffusionDepthTeacher.from_pretrained(path),
                _label(path),
                str(path),
                processing_resolution=default if processing_resolution is None else processing_resolution,
                **teacher_options,
            )
        else:
            raise ValueError(
                f"{path} is not a model directory: expected an exported d3epth student (config.json with "
                '"format": "d3epth-student" + model.safetensors) or a diffusers Marigold / E2E-FT depth directory '
                "(model_index.json, unet/, vae/, scheduler/)"
            )
    elif path.suffix == ".onnx":
        raise ValueError(f"{path}: ONNX files run with onnxruntime; load the exported directory it belongs to instead")
    else:
        checkpoint = load_task_checkpoint(path, tuple(TASKS), "model")
        task_name = checkpoint[TASK_KEY]
        capabilities = TASKS[task_name].capabilities
        if TEACHER in capabilities:
            del checkpoint
            predictor = TeacherDepthPredictor(
                load_teacher(path, purpose="model"),
                _label(path),
                str(path),
                processing_resolution=processing_resolution,
                **teacher_options,
            )
        elif STUDENT in capabilities:
            if num_steps != 1 or ensemble_size != 1:
                warnings.warn(
                    f"{path}: num_steps / ensemble_size apply to diffusion models, not to a {task_name}", stacklevel=2
                )
            model, _ = _student_model(checkpoint, path, teacher, "model")
            del checkpoint
            predictor = ModuleDepthPredictor(model, _label(path), str(path), processing_resolution)
        else:
            what = " (a VAE for the teacher)" if AUTOENCODER in capabilities else ""
            raise CheckpointError(
                f"model: {path} is an {task_name} checkpoint{what}, not an image → depth model; "
                "use a teacher, stage-1 or stage-2 checkpoint, an exported student or a Marigold directory"
            )
    return predictor.to(torch.device(device) if device is not None else "cpu").eval()
