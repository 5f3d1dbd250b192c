"""The convolutional block: ``a = W * x + b`` (a k×k convolution, stride s, padding p) -> batch norm -> φ ->
whole-channel dropout (-> 2x2 max-pool) (see :mod:`bioplaus.kinds.encoder`). The VGG nets' blocks."""

from __future__ import annotations

from bioplaus import ops
from bioplaus.kinds.base import Footprint, register
from bioplaus.kinds.encoder import EncoderBlock


class ConvBlock(EncoderBlock):
    """``W (c_out, c_in, k, k)``; h is (N, c_out, size, size); its heads are 3x3 convolutions and pooled
    decoders; its dropout drops whole channels."""

    name = "conv"
    spatial = True
    channelwise_dropout = True

    def weight_shape(self, spec) -> tuple[int, ...]:
        return (spec.c_out, spec.c_in, spec.kernel, spec.kernel)

    def encode(self, x, p: dict, spec):
        return ops.conv2d_forward(x, p["W"], p["b"], spec.stride, spec.pad, spec.conv_algorithm)  # (N, C, H, W)

    def encode_backward(self, da, enc_cache, need_dx: bool, overwrite: bool):
        return ops.conv2d_backward(da, enc_cache, need_dx=need_dx, overwrite_dout=overwrite)

    def carry(self, spec, M):
        return lambda da, enc_cache: ops.conv2d_input_grad(  # NOT A GRADIENT: M stands in for W
            da, M, enc_cache.shape, spec.stride, spec.pad)

    def footprint(self, spec) -> Footprint:
        """h, and im2col's columns of the input (c_in k² rows per output pixel)."""
        side2 = spec.size * spec.size
        return Footprint(spec.c_out * side2, spec.c_in * spec.kernel * spec.kernel * side2)

    def workspace_bytes(self, spec, batch: int, gpu: bool, itemsize: int) -> int:
        """The buffers of the algorithm this block's convolution runs by on that device (ops.conv: one
        chunk's im2col columns, or Winograd's buffers for each chunk running at once)."""
        side_in = (spec.size - 1) * spec.stride + spec.kernel - 2 * spec.pad  # the input map's side
        return ops.conv.workspace_bytes((batch, spec.c_in, side_in, side_in), self.weight_shape(spec), spec.stride,
                                        spec.pad, spec.conv_algorithm, gpu, itemsize)

    def describe_encoder(self, spec) -> str:
        k = spec.kernel
        return f"Conv{k}x{k}(s{spec.stride}, p{spec.pad}) {spec.c_in}->{spec.c_out} @ {spec.size}x{spec.size}"


CONV = register(ConvBlock())
