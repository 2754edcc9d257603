"""Every picture: importing this module registers them all in :data:`visionattn.show.registry.PICTURES`."""

from visionattn.show import (  # noqa: F401  (registration)
    branch_pictures,
    channel_pictures,
    igpt_pictures,
    sparse_pictures,
    token_pictures,
    vit_pictures,
)
from visionattn.show.registry import PICTURES

__all__ = ["PICTURES"]
