"""Any teacher source → :class:`~d3epth.models.teacher.DiffusionDepthTeacher`: the one teacher-source resolver.

:func:`load_teacher` builds a teacher from a local diffusers directory, a config (optionally with the VAE of an
``AutoencoderTask`` checkpoint, read by :func:`load_autoencoder`) or a ``TeacherTask`` checkpoint, for the teacher
task, the student stages, the predictor and the tools. Checkpoints are read through :mod:`d3epth.checkpoints`, so
this module needs no Lightning and no task class; :func:`teacher_architecture` is what a ``TeacherTask`` checkpoint
stores under :data:`TEACHER_ARCH_KEY` to rebuild its teacher without the sources it was first made from.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from d3epth.checkpoints import (
    AUTOENCODER,
    TEACHER,
    load_task_checkpoint,
    plain_data,
    resolve_run_checkpoint,
    sub_state_dict,
    tasks_with,
)
from d3epth.models.teacher import build, hub
from d3epth.models.teacher.build import TeacherArchitecture, build_autoencoder
from d3epth.models.teacher.model import DiffusionDepthTeacher

__all__ = [
    "TEACHER_ARCH_KEY",
    "TeacherSpec",
    "load_autoencoder",
    "load_teacher",
    "resolve_teacher_source",
    "teacher_architecture",
]

#: Checkpoint key holding the teacher's architecture (component configs + empty-prompt embedding), so a teacher
#: checkpoint rebuilds without the directory or autoencoder checkpoint it was first made from.
TEACHER_ARCH_KEY = "d3epth_teacher"

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclasses.dataclass(frozen=True, kw_only=True)
class TeacherSpec:
    """A teacher source given as a mapping (a plain path string is the other form): ``path`` *or* ``config``.

    Unset (``None``) loading options take :func:`~d3epth.models.teacher.hub.from_pretrained`'s defaults.

    Args:
        path: a local diffusers directory (Marigold, E2E-FT, Stable Diffusion 2), a ``TeacherTask`` ``.ckpt``, or a
            ``TeacherTask`` run directory (its latest completed run's ``last.ckpt``).
        config: the architecture of a random-weight teacher (``from_config`` arguments; tiny by default).
        vae_from: with ``config``: the VAE of an ``AutoencoderTask`` checkpoint or run directory.
        text_embedding_file: with a directory: safetensors file holding the [1,L,C] empty-prompt embedding.
        text_embedding_padding: with a directory: ``do_not_pad`` (Marigold, [1,2,C]) or ``max_length`` (E2E-FT).
        timestep_spacing: with a directory: the scheduler's spacing (``trailing`` by default).
        rescale_betas_zero_snr: with a directory: zero-terminal-SNR schedule (unset keeps the checkpoint's).
        torch_dtype: with a directory: dtype of the UNet and VAE weights.
        variant: with a directory: diffusers weight variant (e.g. ``fp16``).
    """

    path: str | None = None
    config: TeacherArchitecture | None = None
    vae_from: str | None = None
    text_embedding_file: str | None = None
    text_embedding_padding: Literal["do_not_pad", "max_length"] | None = None
    timestep_spacing: Literal["leading", "trailing", "linspace"] | None = None
    rescale_betas_zero_snr: bool | None = None
    torch_dtype: Literal["float32", "float16", "bfloat16"] | None = None
    variant: str | None = None


def _keyword_names(fn: Any) -> list[str]:
    return [n for n, p in inspect.signature(fn).parameters.items() if n not in ("self", "cls", "path")]


def _check_keys(keys: Any, allowed: list[str], where: str) -> None:
    for key in keys:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(sorted(allowed))}"
            raise ValueError(f"{where}: unknown key '{key}'{hint}")


# ----------------------------------------------------------------------------------------------------------------------
# Teacher checkpoints
# ----------------------------------------------------------------------------------------------------------------------


def teacher_architecture(teacher: DiffusionDepthTeacher) -> dict[str, Any]:
    """What rebuilds ``teacher`` without its sources: UNet/VAE/scheduler configs and the empty-prompt embedding."""
    return {
        "unet": plain_data(teacher.unet.config),
        "vae": plain_data(teacher.vae.config),
        "scheduler": plain_data(teacher.noise_scheduler.config),
        "empty_text_embedding": teacher.empty_text_embedding.detach().float().cpu().clone(),
        "text_source": teacher.text_source,
    }


def _teacher_from_architecture(arch: Mapping[str, Any]) -> DiffusionDepthTeacher:
    unet = UNet2DConditionModel.from_config(dict(arch["unet"]))
    vae = AutoencoderKL.from_config(dict(arch["vae"]))
    text_source = arch.get("text_source")
    if text_source is not None and not Path(text_source).is_dir():
        text_source = None  # the original CLIP is gone; export falls back to the embedding stand-in
    return DiffusionDepthTeacher(
        unet,
        vae,
        dict(arch["scheduler"]),
        arch["empty_text_embedding"],
        timestep_spacing=None,
        rescale_betas_zero_snr=None,
        text_source=text_source,
    )


def _from_checkpoint(path: Path, purpose: str) -> DiffusionDepthTeacher:
    checkpoint = load_task_checkpoint(path, tasks_with(TEACHER), purpose)
    arch = checkpoint.get(TEACHER_ARCH_KEY)
    if arch is not None:
        teacher = _teacher_from_architecture(arch)
    else:  # an older checkpoint: rebuild from the task's own teacher spec (needs its sources)
        hp = checkpoint.get("hyper_parameters") or {}
        if "teacher" not in hp:
            raise ValueError(f"{purpose}: {path} holds neither '{TEACHER_ARCH_KEY}' nor a 'teacher' hyper-parameter")
        teacher = load_teacher(hp["teacher"], purpose=f"{purpose} ({path}: hyper_parameters.teacher)")
    state = sub_state_dict(checkpoint["state_dict"], "teacher.")
    missing, unexpected = teacher.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{purpose}: {path} does not match the teacher it describes: "
            f"{len(missing)} missing keys (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
    return teacher


# ----------------------------------------------------------------------------------------------------------------------
# Directories and configs
# ----------------------------------------------------------------------------------------------------------------------


def _from_pretrained(spec: Mapping[str, Any], purpose: str) -> DiffusionDepthTeacher:
    kwargs = {k: v for k, v in spec.items() if k != "path"}
    _check_keys(kwargs, _keyword_names(hub.from_pretrained), f"{purpose} (path spec)")
    dtype = kwargs.get("torch_dtype")
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"{purpose}: torch_dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        kwargs["torch_dtype"] = _DTYPES[dtype]
    return hub.from_pretrained(Path(str(spec["path"])).expanduser(), **kwargs)


def _from_config(spec: Mapping[str, Any], purpose: str) -> DiffusionDepthTeacher:
    _check_keys(spec, ["config", "vae_from"], f"{purpose} (config spec)")
    config = dict(spec["config"] or {})
    _check_keys(config, _keyword_names(build.from_config), f"{purpose}.config")
    teacher = build.from_config(**config)
    vae_from = spec.get("vae_from")
    if vae_from is None:
        return teacher
    vae = load_autoencoder(vae_from, purpose=f"{purpose}.vae_from")
    if vae.config.latent_channels != teacher.latent_channels:
        raise ValueError(
            f"{purpose}.vae_from: {vae_from} has {vae.config.latent_channels} latent channels, the teacher's UNet "
            f"expects {teacher.latent_channels} (config.latent_channels)"
        )
    # The vae_* entries of `config` only shaped the placeholder VAE, which the trained one replaces.
    return teacher.replace(vae=vae)


def load_autoencoder(path: str | Path, purpose: str = "vae_from") -> AutoencoderKL:
    """Load the VAE of an ``AutoencoderTask`` checkpoint, ``scaling_factor`` set as ``AutoencoderTask.export_vae``.

    Args:
        path: the ``.ckpt`` written by ``tools/fit.py --config configs/sample/autoencoder.yaml``.
        purpose: what the VAE is for, for error messages (e.g. ``"model.init_args.teacher.vae_from"``).

    Returns:
        The ``AutoencoderKL`` in eval mode, float32, on the CPU.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a d3epth checkpoint, or one written by another task.
    """
    checkpoint = load_task_checkpoint(path, tasks_with(AUTOENCODER), purpose)
    hp = dict(checkpoint.get("hyper_parameters") or {})
    arch = {
        k: hp[k] for k in ("block_out_channels", "layers_per_block", "norm_num_groups", "latent_channels") if k in hp
    }
    state = checkpoint["state_dict"]
    if hp.get("scaling_factor") is not None:
        scale = float(hp["scaling_factor"])
    else:
        var = state.get("latent_var")
        if var is None:
            raise ValueError(f"{purpose}: {path} has neither a scaling_factor nor latent statistics")
        scale = float(var.float().clamp_min(1e-12).rsqrt())
    vae = build_autoencoder(
        **arch,
        sample_size=int(hp.get("sample_size", 64)),
        scaling_factor=scale,
        mid_block_attention=bool(hp.get("mid_block_attention", True)),
    )
    vae.load_state_dict(sub_state_dict(state, "vae."))
    return vae.eval()


# ----------------------------------------------------------------------------------------------------------------------
# Any source
# ----------------------------------------------------------------------------------------------------------------------


def resolve_teacher_source(
    source: str | Path | TeacherSpec | Mapping[str, Any] | None, purpose: str
) -> str | dict[str, Any] | None:
    """``source`` as plain data with run directories replaced by the checkpoints they resolve to.

    What a task records in its hyper-parameters: a run directory names the latest completed run *now*, a checkpoint
    path names the one this task was built from.
    """
    if source is None:
        return None
    if isinstance(source, TeacherSpec | Mapping):
        spec = plain_data(source)
        for key in ("path", "vae_from"):
            if spec.get(key) is not None:
                spec[key] = str(resolve_run_checkpoint(Path(str(spec[key])).expanduser(), f"{purpose}.{key}"))
        return spec
    return str(resolve_run_checkpoint(Path(str(source)).expanduser(), purpose))


def load_teacher(
    source: str | Path | Mapping[str, Any], freeze: bool = False, purpose: str = "teacher"
) -> DiffusionDepthTeacher:
    """Build a :class:`~d3epth.models.teacher.DiffusionDepthTeacher` from a path, a config or a checkpoint.

    Sources:

    * ``"dir/"`` — a local diffusers directory (Marigold, E2E-FT or Stable Diffusion 2): ``from_pretrained(dir)``;
    * ``"run.ckpt"`` — a ``TeacherTask`` checkpoint: the architecture stored in it (or, for a checkpoint without
      one, its ``teacher`` hyper-parameter) plus its ``teacher.*`` weights, the VAE included;
    * ``{"path": dir, **kwargs}`` — ``from_pretrained(dir, **kwargs)`` (``timestep_spacing``,
      ``rescale_betas_zero_snr``, ``text_embedding_file``, ``torch_dtype`` as a string, ...); a ``.ckpt`` path takes
      no kwargs;
    * ``{"config": {...}, "vae_from": ckpt | None}`` — ``from_config(**config)`` (random weights from its ``seed``),
      with the VAE of an ``AutoencoderTask`` checkpoint (:func:`load_autoencoder`) when ``vae_from`` is set.

    Args:
        source: one of the above.
        freeze: call :meth:`~d3epth.models.teacher.DiffusionDepthTeacher.freeze` (eval, no gradients) before returning.
        purpose: what the teacher is for, named in error messages (e.g. ``"model.init_args.teacher"``).

    Returns:
        The teacher on the CPU (train mode with gradients unless ``freeze``).

    Raises:
        FileNotFoundError: a named directory or checkpoint does not exist.
        ValueError: a checkpoint written by another task, an unknown spec key, or an incompatible VAE.
    """
    if isinstance(source, TeacherSpec | Mapping):
        # Unset options (None) fall back to the loaders' defaults; hyper-parameters store the spec as plain data.
        source = plain_data(source)
        _check_keys(source, [field.name for field in dataclasses.fields(TeacherSpec)], purpose)
        source = {key: value for key, value in source.items() if value is not None}
        if "path" in source and "config" in source:
            raise ValueError(f"{purpose}: give either 'path' (a directory or .ckpt) or 'config', not both")
        if "path" in source:
            path = resolve_run_checkpoint(Path(str(source["path"])).expanduser(), purpose)
            source["path"] = str(path)
            if path.suffix == ".ckpt" or path.is_file():
                if len(source) > 1:
                    extra = sorted(k for k in source if k != "path")
                    raise ValueError(f"{purpose}: a checkpoint path takes no other keys, got {extra}")
                teacher = _from_checkpoint(path, purpose)
            else:
                teacher = _from_pretrained(source, purpose)
        elif "config" in source:
            teacher = _from_config(source, purpose)
        else:
            raise ValueError(
                f"{purpose}: a teacher spec mapping needs 'path' (diffusers directory or TeacherTask .ckpt) or "
                "'config' (DiffusionDepthTeacher.from_config arguments, optional 'vae_from'); "
                f"got keys {sorted(source)}"
            )
    elif isinstance(source, str | Path):
        path = resolve_run_checkpoint(Path(str(source)).expanduser(), purpose)
        if path.is_dir():
            teacher = hub.from_pretrained(path)
        elif path.is_file() or path.suffix == ".ckpt":
            teacher = _from_checkpoint(path, purpose)
        else:
            raise FileNotFoundError(
                f"{purpose}: {path} is neither a diffusers teacher directory nor a TeacherTask .ckpt file"
            )
    else:
        raise ValueError(f"{purpose}: expected a path or a mapping, got {type(source).__name__}")
    return teacher.freeze() if freeze else teacher
