"""Pictures of channel, spatial and branch attention (being written)."""
