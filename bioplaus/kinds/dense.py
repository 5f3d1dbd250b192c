"""The dense block: ``a = x Wᵀ + b`` (x flattened) -> batch norm -> φ -> element dropout (see
:mod:`bioplaus.kinds.encoder`). The mlp's blocks and the dense blocks after a VGG's convolutions."""

from __future__ import annotations

from bioplaus import ops
from bioplaus.kinds.base import register
from bioplaus.kinds.encoder import EncoderBlock


class DenseBlock(EncoderBlock):
    """``W (c_out, c_in)``; h is (N, c_out); its heads are dense layers."""

    name = "dense"

    def weight_shape(self, spec) -> tuple[int, ...]:
        return (spec.c_out, spec.c_in)

    def encode(self, x, p: dict, spec):
        x = x.reshape(x.shape[0], -1)  # (N, D_in)
        return ops.dense_forward(x, p["W"], p["b"])  # (N, D_out)

    def encode_backward(self, da, enc_cache, need_dx: bool, overwrite: bool):
        return ops.dense_backward(da, enc_cache, need_dx=need_dx)

    def carry(self, spec, M):
        return lambda da, enc_cache: da @ M  # NOT A GRADIENT: M stands in for W

    def describe_encoder(self, spec) -> str:
        return f"Dense {spec.c_in}->{spec.c_out}"


DENSE = register(DenseBlock())
