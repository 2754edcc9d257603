"""Pictures of token attention (being written)."""
