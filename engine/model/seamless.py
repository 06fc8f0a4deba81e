"""Seamless loops in the diffusion itself: circular padding along the time axis.

A spectrogram image's width is time. With zero padding, every convolution of the UNet and of
the VAE decoder sees silence beyond the image's left and right edges, so the generated content
does not continue from the right edge into the left one, and a clip played in a loop has a
seam (a held pad drops away for the last few pixels). Padding the time axis circularly makes
each convolution see the other edge instead, as if the image were drawn on a cylinder (the
"seamless tiling" technique, here on one axis only): the diffusion generates a loop. The
frequency axis keeps its zero padding.

The switch is per call: Riffusion-exact output (zero padding) stays the default, and one
loaded model serves both kinds of request. Only the VAE *decoder* is switched: the seed image
is encoded as Riffusion does (and its cached latents stay valid).

Thread: :attr:`TimeCircularPadding.enabled` is set by the generator's thread, under its lock,
before the model runs; the patched convolutions read it on the same thread.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TimeCircularPadding:
    """Switchable circular time padding for every zero-padded ``Conv2d`` in ``modules``."""

    def __init__(self, *modules: nn.Module) -> None:
        self.enabled = False
        self.convs: list[nn.Conv2d] = []
        for module in modules:
            for conv in module.modules():
                if (isinstance(conv, nn.Conv2d) and conv.padding_mode == "zeros"
                        and isinstance(conv.padding, tuple) and conv.padding[1] > 0):
                    self._patch(conv)
                    self.convs.append(conv)

    def _patch(self, conv: nn.Conv2d) -> None:
        """Route ``conv``'s convolution through :meth:`_conv` when enabled."""
        original = conv._conv_forward
        pad_h, pad_w = int(conv.padding[0]), int(conv.padding[1])

        def conv_forward(x: torch.Tensor, weight: torch.Tensor,
                         bias: torch.Tensor | None) -> torch.Tensor:
            if not self.enabled:
                return original(x, weight, bias)
            x = F.pad(x, (pad_w, pad_w, 0, 0), mode="circular")
            if pad_h:
                x = F.pad(x, (0, 0, pad_h, pad_h))
            return F.conv2d(x, weight, bias, conv.stride, 0, conv.dilation, conv.groups)

        conv.__dict__["_conv_forward"] = conv_forward  # an instance attribute wins
