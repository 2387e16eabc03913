"""Exported students: a self-contained directory that rebuilds the image → depth network without training code.

``tools/export.py`` writes a trained D³epth student (stage 1, stage 2 or the no-teacher baseline) as::

    <dir>/config.json         format marker, d3epth version, DepthStudent arguments, heads, pixel decoder,
                              input / output conventions (see :func:`save_student`)
    <dir>/model.safetensors   the student's weights (DepthStudent state dict)
    <dir>/vae/                pixel decoder "vae" only: the teacher's AutoencoderKL in diffusers layout (its decoder
                              turns the student's latent into depth; the encoder is kept so diffusers loads it as is)
    <dir>/model.onnx          optional (``tools/export.py --onnx``): the same network, dynamic batch / height / width

:func:`load_student` reads it back as a :class:`StudentDepthModel` — plain ``nn.Module``s (timm + diffusers), no
Lightning, no teacher UNet. Input: RGB [B,3,H,W] in [−1, 1], any ``H, W``. Output: affine-invariant depth
[B,1,H,W] (larger = farther, unknown scale and shift; in [−1, 1] for the VAE decoder, unbounded for the light
depth head).

The export steps themselves are here too, so that ``tools/export.py`` only parses and chooses: :func:`save_student`,
:func:`export_student_onnx` (:func:`export_onnx` + the onnxruntime parity check :func:`check_onnx`, recorded in
``config.json``), :func:`export_teacher` (a diffusers Marigold directory, optionally loaded back as a check) and
:func:`remove_export_artefacts`.
"""

from __future__ import annotations

import copy
import json
import shutil
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from diffusers import AutoencoderKL
from safetensors.torch import load_file, save_file
from torch import nn

from d3epth import __version__
from d3epth.errors import ConfigError
from d3epth.models.depth_model import StudentDepthModel
from d3epth.models.fusion import fuse_conv_bn
from d3epth.models.student import DepthStudent, architecture_arguments

if TYPE_CHECKING:
    from diffusers import MarigoldDepthPipeline  # loads transformers; only the check needs it

    from d3epth.models.teacher import DiffusionDepthTeacher

__all__ = [
    "ARTEFACTS",
    "CONFIG_FILE",
    "FORMAT",
    "ONNX_ATOL",
    "ONNX_FILE",
    "ONNX_RTOL",
    "VAE_SUBFOLDER",
    "WEIGHTS_FILE",
    "OnnxExport",
    "check_onnx",
    "export_onnx",
    "export_student_onnx",
    "export_teacher",
    "is_exported_student",
    "load_student",
    "read_export_config",
    "remove_export_artefacts",
    "save_student",
]

#: ``config.json`` ``format`` value that marks an exported d3epth student directory.
FORMAT = "d3epth-student"
#: Version of the directory layout; :func:`load_student` refuses newer ones.
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
VAE_SUBFOLDER = "vae"
ONNX_FILE = "model.onnx"
#: ONNX parity tolerance: max |onnxruntime − PyTorch| ≤ ONNX_RTOL × (max − min of the PyTorch output), at least
#: ONNX_ATOL. float32 kernels differ in summation order; 1e-4 of the output range is far below what a depth map shows.
ONNX_RTOL = 1e-4
ONNX_ATOL = 1e-6
#: What an export writes (student or teacher); :func:`remove_export_artefacts` removes these and nothing else.
ARTEFACTS = (
    "config.json",
    "model.safetensors",
    "model.onnx",
    "model_index.json",
    "empty_text_embedding.safetensors",
    "vae",
    "unet",
    "scheduler",
    "text_encoder",
    "tokenizer",
)

INPUT_CONVENTION: dict[str, Any] = {
    "name": "image",
    "layout": "NCHW",
    "dtype": "float32",
    "channels": "RGB",
    "range": [-1.0, 1.0],
    "normalisation": "x / 127.5 - 1 for 8-bit images (the model applies its backbone's mean/std itself)",
    "size": "any height and width (padded internally at the bottom/right, output cropped back)",
}


def _json_ready(value: Any, where: str) -> Any:
    """Plain JSON types from YAML/OmegaConf containers, tuples and scalars; anything else is an error."""
    if isinstance(value, Mapping):
        return {str(k): _json_ready(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return [_json_ready(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise ValueError(f"{where}: {type(value).__name__} value {value!r} cannot be written to {CONFIG_FILE}")


def save_student(
    directory: str | Path,
    student: DepthStudent,
    student_kwargs: Mapping[str, Any],
    vae: AutoencoderKL | None = None,
    source: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (+ ``vae/``) for a student; see the module docstring.

    ``config.json`` records: ``format`` / ``format_version``, ``d3epth_version``, ``student`` (the
    ``DepthStudent`` keyword arguments, ``pretrained_weights`` dropped: the weights are in the file), ``heads``,
    ``pixel_decoder`` (``"light"`` | ``"vae"``), ``vae_subfolder``, ``size_multiple``, ``input`` (RGB in [−1, 1],
    NCHW, any size) and ``output`` (affine-invariant depth, larger = farther, and its range), plus ``source``.

    Args:
        directory: output directory (created; existing files of the same names are replaced).
        student: the trained student.
        student_kwargs: the arguments ``student`` was built with (a task's ``hparams["student"]``).
        vae: the teacher's autoencoder for the ``"vae"`` pixel decoder, ``None`` for ``"light"``.
        source: provenance written to ``config.json`` (e.g. the checkpoint path and task class).

    Returns:
        The directory.
    """
    model = StudentDepthModel(student, vae)  # validates that the pixel decoder's head exists
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    kwargs = _json_ready(architecture_arguments(student_kwargs), "student")
    bounded = vae is not None or kwargs.get("depth_activation") == "tanh"
    depth_range = [-1.0, 1.0] if bounded else None  # None: unbounded
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "d3epth_version": __version__,
        "student": kwargs,
        "heads": list(student.heads),
        "pixel_decoder": model.pixel_decoder,
        "vae_subfolder": VAE_SUBFOLDER if vae is not None else None,
        "size_multiple": model.size_multiple,
        "input": INPUT_CONVENTION,
        "output": {
            "name": "depth",
            "layout": "NCHW",
            "kind": "depth",
            "description": "affine-invariant (relative) depth, larger = farther; unknown scale and shift",
            "range": depth_range,
        },
        "source": _json_ready(dict(source or {}), "source"),
    }
    state = {key: value.detach().cpu().contiguous() for key, value in student.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": "pt", "d3epth_format": FORMAT})
    if vae is not None:
        vae.save_pretrained(directory / VAE_SUBFOLDER, safe_serialization=True)
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return directory


def is_exported_student(directory: str | Path) -> bool:
    """Whether ``directory`` holds a ``config.json`` with the exported-student format marker."""
    config = Path(directory) / CONFIG_FILE
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("format") == FORMAT
    except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
        return False


def read_export_config(directory: str | Path) -> dict[str, Any]:
    """Read and check the ``config.json`` of an exported student.

    Raises:
        FileNotFoundError: no directory, no ``config.json`` or no ``model.safetensors``.
        ValueError: unreadable JSON, another format, a newer format version, or missing keys.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"exported student directory not found: {directory}")
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not an exported d3epth student: no {CONFIG_FILE}")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ValueError(f'{path}: not an exported d3epth student (expected "format": "{FORMAT}")')
    if int(config.get("format_version", 0)) > FORMAT_VERSION:
        raise ValueError(
            f"{path}: format_version {config['format_version']} is newer than this d3epth supports "
            f"({FORMAT_VERSION}); upgrade d3epth"
        )
    missing = [key for key in ("student", "pixel_decoder") if key not in config]
    if missing:
        raise ValueError(f"{path}: missing keys {missing}")
    if config["pixel_decoder"] not in ("light", "vae"):
        raise ValueError(f"{path}: pixel_decoder must be 'light' or 'vae', got {config['pixel_decoder']!r}")
    if not (directory / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"{directory} has {CONFIG_FILE} but no {WEIGHTS_FILE}")
    return config


def load_student(directory: str | Path, map_location: str | torch.device = "cpu") -> StudentDepthModel:
    """Rebuild an exported student (see :func:`save_student`) in eval mode; nothing is downloaded.

    Args:
        directory: the exported directory.
        map_location: device for the weights.

    Returns:
        The :class:`StudentDepthModel` (``eval()``, on ``map_location``).

    Raises:
        FileNotFoundError: missing directory or files (see :func:`read_export_config`), or a missing ``vae/``.
        ValueError: a bad ``config.json``, or weights that do not match the configured student.
    """
    directory = Path(directory)
    config = read_export_config(directory)
    student = DepthStudent(**config["student"])
    state = load_file(str(directory / WEIGHTS_FILE), device=str(map_location))
    missing, unexpected = student.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{directory / WEIGHTS_FILE} does not match the student in {CONFIG_FILE}: {len(missing)} missing keys "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
    vae = None
    if config["pixel_decoder"] == "vae":
        subfolder = config.get("vae_subfolder") or VAE_SUBFOLDER
        if not (directory / subfolder).is_dir():
            raise FileNotFoundError(f"{directory}: pixel_decoder 'vae' needs the {subfolder}/ folder, which is missing")
        vae = AutoencoderKL.from_pretrained(directory, subfolder=subfolder, local_files_only=True)
    return StudentDepthModel(student, vae).to(map_location).eval()


def remove_export_artefacts(directory: str | Path) -> None:
    """Delete the files and folders an earlier export wrote into ``directory`` (:data:`ARTEFACTS`), nothing else.

    A stale ``vae/`` or ``model.onnx`` must not outlive a new export into the same directory.
    """
    directory = Path(directory)
    for name in ARTEFACTS:
        target = directory / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


# ----------------------------------------------------------------------------------------------------------------------
# ONNX
# ----------------------------------------------------------------------------------------------------------------------


def export_onnx(model: nn.Module, path: Path, size: tuple[int, int], opset: int) -> None:
    """Trace ``model`` (image [B,3,H,W] → depth [B,1,H,W]) to ONNX with dynamic batch, height and width.

    The TorchScript exporter (``dynamo=False``) records the student's integer size arithmetic as graph ops, so the
    graph pads and crops correctly at any size; Python branches are frozen at the traced size, hence ``size`` should be
    one that needs padding (then the pad is in the graph, and a zero pad is harmless at other sizes).

    Args:
        model: the network, in eval mode.
        path: the ``.onnx`` file to write.
        size: ``(H, W)`` of the example image the graph is traced with.
        opset: ONNX opset version (17 or later).
    """
    import onnx  # the optional extra: pip install -e '.[onnx]'

    image = torch.rand(1, 3, *size) * 2 - 1
    axes = {0: "batch", 2: "height", 3: "width"}
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer warns about every Python-level shape comparison; the docstring above says why it is fine.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            model,
            (image,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=["image"],
            output_names=["depth"],
            dynamic_axes={"image": axes, "depth": axes},
        )
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    for key, value in {
        "input": "image: float32 [B,3,H,W] RGB in [-1,1], any H and W",
        "output": "depth: float32 [B,1,H,W] affine-invariant (relative) depth, larger = farther",
        "producer": "d3epth tools/export.py",
    }.items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(graph, str(path))


def check_onnx(model: nn.Module, path: Path, sizes: list[tuple[int, int, int]]) -> tuple[float, float]:
    """Run the ONNX file with onnxruntime and PyTorch on random images of ``(B, H, W)`` sizes.

    Returns:
        ``(max_abs_diff, tolerance)`` over all sizes, the tolerance being ``ONNX_RTOL × output range`` (see above).

    Raises:
        RuntimeError: the ONNX output has another shape than PyTorch's.
    """
    import onnxruntime  # the optional extra: pip install -e '.[onnx]'

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(0)
    worst, tolerance = 0.0, float("inf")
    for batch, height, width in sizes:
        image = torch.rand(batch, 3, height, width, generator=generator) * 2 - 1
        with torch.no_grad():
            reference = model(image)
        (output,) = session.run(["depth"], {"image": image.numpy()})
        if tuple(output.shape) != tuple(reference.shape):
            raise RuntimeError(
                f"ONNX output shape {output.shape} != PyTorch {tuple(reference.shape)} at {height}x{width}"
            )
        diff = float((torch.from_numpy(output) - reference).abs().max())
        span = float(reference.max() - reference.min())
        worst = max(worst, diff)
        tolerance = min(tolerance, max(ONNX_RTOL * span, ONNX_ATOL))
    return worst, tolerance


class OnnxExport(NamedTuple):
    """What :func:`export_student_onnx` wrote and how the onnxruntime check went."""

    path: Path
    size: tuple[int, int]
    check_sizes: list[tuple[int, int, int]]
    max_abs_diff: float
    tolerance: float

    @property
    def ok(self) -> bool:
        """Whether onnxruntime matches PyTorch within the tolerance."""
        return self.max_abs_diff <= self.tolerance


def export_student_onnx(
    model: StudentDepthModel, directory: str | Path, opset: int = 17, size: tuple[int, int] | None = None
) -> OnnxExport:
    """Write ``directory/model.onnx`` for an exported student, check it, and record both in its ``config.json``.

    Args:
        model: the student with its pixel decoder (the one :func:`save_student` wrote to ``directory``).
        directory: the exported student directory (must already hold ``config.json``).
        opset: ONNX opset.
        size: ``(H, W)`` the graph is traced at; default ``(2m + 5, 3m + 7)`` for the model's size multiple ``m``,
            a size that needs internal padding, so the padding path is in the graph. A size with both sides multiples
            of ``m`` is refused: its trace leaves the padding out, and the graph fails at every other size.

    Raises:
        ConfigError: such a size.

    Returns:
        The file, the traced size, the check sizes and the parity result. The check runs at sizes other than the
        traced one: an exact multiple (no padding), an odd size, and batch 2.

    The graph is of the inference form of the network: a copy with its BatchNorms folded into their convolutions
    (:func:`~d3epth.models.fusion.fuse_conv_bn`), so onnxruntime runs the same convolutions as ``tools/predict.py``;
    the parity check compares it with the *unfused* ``model``, so it covers the fusion too. (ONNX has no memory
    format: onnxruntime's CPU provider picks its own blocked layout for the convolutions.)
    """
    directory = Path(directory)
    multiple = model.size_multiple
    size = (int(size[0]), int(size[1])) if size else (2 * multiple + 5, 3 * multiple + 7)
    if multiple > 1 and size[0] % multiple == 0 and size[1] % multiple == 0:
        raise ConfigError(
            f"ONNX trace size {size[0]}x{size[1]}: both sides are multiples of the student's size multiple {multiple}, "
            "so the traced graph would leave out the padding every other size needs; trace at a size that is not "
            f"(the default {2 * multiple + 5}x{3 * multiple + 7})"
        )
    path = directory / ONNX_FILE
    fused = copy.deepcopy(model).eval()
    pairs = fuse_conv_bn(fused)
    check_sizes = [(1, 2 * multiple, 3 * multiple), (2, multiple + 3, 2 * multiple + 11)]
    try:
        export_onnx(fused, path, size, opset)
        diff, tolerance = check_onnx(model.eval(), path, check_sizes)
    except BaseException:
        path.unlink(missing_ok=True)  # never leave a graph behind that was not checked
        raise
    config_path = directory / CONFIG_FILE
    config = json.loads(config_path.read_text())
    config["onnx"] = {
        "file": ONNX_FILE,
        "opset": opset,
        "dynamic_axes": ["batch", "height", "width"],
        "conv_bn_fused": len(pairs),
        "check": {"sizes": [list(s) for s in check_sizes], "max_abs_diff": diff, "tolerance": tolerance},
    }
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    return OnnxExport(path, size, check_sizes, diff, tolerance)


# ----------------------------------------------------------------------------------------------------------------------
# Teacher
# ----------------------------------------------------------------------------------------------------------------------


def export_teacher(
    teacher: DiffusionDepthTeacher,
    directory: str | Path,
    default_denoising_steps: int = 1,
    default_processing_resolution: int | None = None,
    check: bool = True,
) -> MarigoldDepthPipeline | None:
    """Write a teacher as a diffusers Marigold directory and, with ``check``, load it back with diffusers.

    Args:
        teacher: the teacher to export.
        directory: output directory.
        default_denoising_steps: ``model_index.json`` default steps.
        default_processing_resolution: ``model_index.json`` default resolution (``None``: the VAE's sample size).
        check: load the result with ``MarigoldDepthPipeline.from_pretrained`` (offline).

    Returns:
        The loaded pipeline when ``check``, else ``None``.
    """
    teacher.save_pretrained(
        directory,
        default_denoising_steps=default_denoising_steps,
        default_processing_resolution=default_processing_resolution,
    )
    if not check:
        return None
    from diffusers import MarigoldDepthPipeline  # loads transformers; only the check needs it

    return MarigoldDepthPipeline.from_pretrained(directory, local_files_only=True)
