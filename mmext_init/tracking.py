"""Placeholder: the write tracker is being written."""
import torch


def add_note(tensor: torch.Tensor, note: str) -> None:
    """Attach a note to the provenance entry of ``tensor`` (no-op outside init)."""
