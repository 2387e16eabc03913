"""The one image → depth network: a student with its pixel decoder, and the one latent → depth decode.

Every path from an RGB image to depth through a student goes through here: stage 1 and stage 2 (their ``forward``),
inference (:mod:`d3epth.inference`) and export (:mod:`d3epth.models.export`). Two pixel decoders exist (D³epth §3):

* ``"light"`` — the student's own depth head (the fast model);
* ``"vae"`` — the frozen teacher VAE decoder applied to the student's 4-channel latent, as Marigold decodes its
  depth latent (mean of the three decoded channels, Ke et al., CVPR 2024, §3.1).
"""

from __future__ import annotations

from diffusers import AutoencoderKL
from torch import Tensor, nn

from d3epth.models.student import DepthStudent

__all__ = ["StudentDepthModel", "decode_depth_latent"]


def decode_depth_latent(vae: AutoencoderKL, latent: Tensor) -> Tensor:
    """Decode a (scaled) depth latent as the teacher does: mean of the 3 decoded channels, clipped to [−1, 1].

    Args:
        vae: the teacher's autoencoder; its ``config.scaling_factor`` undoes the latent scaling.
        latent: ``[B, 4, h, w]``, multiplied by the scaling factor.

    Returns:
        ``[B, 1, h·f, w·f]`` normalised depth in [−1, 1] (f = 8 for the SD VAE).
    """
    decoded = vae.decode(latent.to(vae.dtype) / float(vae.config.scaling_factor), return_dict=False)[0]
    return decoded.mean(dim=1, keepdim=True).clamp(-1.0, 1.0)


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
        """Affine-invariant depth for RGB images.

        Args:
            image: ``[B, 3, H, W]`` in [−1, 1].

        Returns:
            ``[B, 1, H, W]`` depth, larger = farther (unbounded for ``light``, in [−1, 1] for ``vae``).
        """
        if self.vae is None:
            return self.student(image, heads=("depth",))["depth"]
        height, width = image.shape[-2:]
        latent = self.student(image, heads=("latent",))["latent"]
        # The latent grid covers the image padded to a multiple of 8 at the bottom/right: crop the decoded depth.
        return decode_depth_latent(self.vae, latent)[..., :height, :width]
