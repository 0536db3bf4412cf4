"""DeNet's sparse sampling: G x G samples per box, grid-major channels, then box height and width."""

from .op import SparseSample, sparse_sample

__all__ = ["sparse_sample", "SparseSample"]
