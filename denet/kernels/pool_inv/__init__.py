"""DeNet's pool-inverse (``PI``): nearest upsampling by an integer factor, block-sum gradient."""

from .op import PoolInv, pool_inv

__all__ = ["pool_inv", "PoolInv"]
