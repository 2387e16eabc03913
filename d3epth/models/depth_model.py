"""The one image → depth network: a student with its pixel decoder, and the one latent → depth decode.

Every path from an RGB image to depth through a student goes through :func:`student_depth` here: stage 1 and stage 2
(their ``forward``), inference (:mod:`d3epth.inference`) and export (:mod:`d3epth.models.export`, through
:class:`StudentDepthModel`). Two pixel decoders exist (D³epth §3):

* ``"light"`` — the student's own depth head (the fast model);
* ``"vae"`` — the frozen teacher VAE decoder applied to the student's 4-channel latent, as Marigold decodes its
  depth latent (mean of the three decoded channels, Ke et al., CVPR 2024, §3.1).
"""

from __future__ import annotations

from collections.abc import Sequence

from diffusers import AutoencoderKL
from torch import Tensor, nn

from d3epth.models.padding import crop_to
from d3epth.models.student import DepthStudent

__all__ = ["StudentDepthModel", "decode_depth_latent", "student_depth"]


def decode_depth_latent(vae: AutoencoderKL, latent: Tensor, size: Sequence[int] | None = None) -> Tensor:
    """Decode a (scaled) depth latent as the teacher does: mean of the 3 decoded channels, clipped to [−1, 1].

    Args:
        vae: the teacher's autoencoder; its ``config.scaling_factor`` undoes the latent scaling.
        latent: [B,4,h,w], multiplied by the scaling factor.
        size: ``(H, W)`` of the image the latent was computed for: the decoded map is cropped to it (the latent grid
            covers the image padded bottom/right to a multiple of 8). ``None``: no crop.

    Returns:
        [B,1,8h,8w] normalised depth in [−1, 1] (for the SD VAE, whose factor is 8), or [B,1,H,W] with ``size``.
    """
    decoded = vae.decode(latent.to(vae.dtype) / float(vae.config.scaling_factor), return_dict=False)[0]
    depth = decoded.mean(dim=1, keepdim=True).clamp(-1.0, 1.0)
    return depth if size is None else crop_to(depth, size)


def student_depth(student: DepthStudent, image: Tensor, vae: AutoencoderKL | None = None) -> Tensor:
    """Depth of a student for RGB images, through its pixel decoder (the body of :class:`StudentDepthModel`).

    Args:
        student: the student network.
        image: [B,3,H,W] in [−1, 1].
        vae: ``None`` for the ``"light"`` pixel decoder (the student's depth head), or the teacher's autoencoder for
            the ``"vae"`` decoder (:func:`decode_depth_latent` of the student's latent).

    Returns:
        [B,1,H,W] depth, larger = farther (unbounded for ``light``, in [−1, 1] for ``vae``).
    """
    if vae is None:
        return student(image, heads=("depth",))["depth"]
    return decode_depth_latent(vae, student(image, heads=("latent",))["latent"], image.shape[-2:])


class StudentDepthModel(nn.Module):
    """Image → depth: a :class:`~d3epth.models.DepthStudent` with its pixel decoder.

    Args:
        student: the student network.
        vae: ``None`` for the ``"light"`` pixel decoder (the student's own depth head), or the teacher's autoencoder
            for the ``"vae"`` decoder (its decoder turns the student's latent into depth, as in stage 1 and in stage 2
            with ``pixel_decoder: vae``).

    Raises:
        ValueError: the student lacks the head its pixel decoder needs.
    """

    def __init__(self, student: DepthStudent, vae: AutoencoderKL | None = None) -> None:
        super().__init__()
        needed = "latent" if vae is not None else "depth"
        if needed not in student.heads:
            raise ValueError(
                f"pixel decoder {'vae' if vae is not None else 'light'} needs the student's {needed!r} head, "
                f"but the student has heads {list(student.heads)}"
            )
        if vae is not None:
            assert student.latent_head is not None
            if student.latent_head.proj.out_channels != vae.config.latent_channels:
                raise ValueError(
                    f"the student predicts {student.latent_head.proj.out_channels}-channel latents but the VAE "
                    f"decodes {vae.config.latent_channels}-channel ones"
                )
            vae.requires_grad_(False).eval()
        self.student = student
        self.vae = vae

    @property
    def pixel_decoder(self) -> str:
        """``"light"`` (student depth head) or ``"vae"`` (teacher VAE decoder on the student's latent)."""
        return "light" if self.vae is None else "vae"

    @property
    def size_multiple(self) -> int:
        """Input sizes that are multiples of this need no internal padding (32 for most timm backbones)."""
        head = "depth" if self.vae is None else "latent"
        return self.student.pad_multiple((head,))

    def forward(self, image: Tensor) -> Tensor:
        """Affine-invariant depth for RGB images (:func:`student_depth`).

        Args:
            image: [B,3,H,W] in [−1, 1].

        Returns:
            [B,1,H,W] depth, larger = farther (unbounded for ``light``, in [−1, 1] for ``vae``).
        """
        return student_depth(self.student, image, self.vae)
