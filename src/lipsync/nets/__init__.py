"""Network definitions in plain torch, one model per module, with the layouts of the public checkpoints.

No I/O here: :mod:`lipsync.models` finds, verifies and loads the weights into these modules.

``NETWORKS`` maps each catalog name to a factory that builds the (randomly initialised) module whose
``state_dict()`` keys and shapes equal that checkpoint's (without the ``module.`` prefix some copies carry).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from lipsync.nets.bisenet import BiSeNet
from lipsync.nets.blocks import fold_batchnorm, has_batchnorm, to_channels_last
from lipsync.nets.gfpgan import GFPGANv1Clean, StyleGAN2GeneratorSFT, gfpgan_v14
from lipsync.nets.syncnet import SyncNet, stack_lower_halves, sync_score
from lipsync.nets.wav2lip import Wav2Lip

NETWORKS: dict[str, Callable[[], nn.Module]] = {
    "wav2lip_gan": Wav2Lip,  # same generator, trained with the visual-quality discriminator
    "wav2lip": Wav2Lip,
    "lipsync_expert": SyncNet,
    "gfpgan_v1.4": gfpgan_v14,
    "face_parsing": BiSeNet,
}

__all__ = [
    "NETWORKS",
    "BiSeNet",
    "GFPGANv1Clean",
    "StyleGAN2GeneratorSFT",
    "SyncNet",
    "Wav2Lip",
    "fold_batchnorm",
    "gfpgan_v14",
    "has_batchnorm",
    "stack_lower_halves",
    "sync_score",
    "to_channels_last",
]
