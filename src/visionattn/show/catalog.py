"""Every picture: importing this module registers them all in :data:`visionattn.show.registry.PICTURES`."""

from visionattn.show import channel_pictures, token_pictures  # noqa: F401  (registration)
from visionattn.show.registry import PICTURES

__all__ = ["PICTURES"]
