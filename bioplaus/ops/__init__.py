"""Pure array ops, each forward with its hand-written backward (NumPy or CuPy, dtype-preserving).

Contract: ``out, cache = op_forward(...)`` and ``dx, dW, ... = op_backward(dout, cache)``; caches
are returned to the caller and never stored; every backward returns the true gradient.
"""

from bioplaus.ops.activation import act_backward, act_forward
from bioplaus.ops.batchnorm import batchnorm_backward, batchnorm_forward
from bioplaus.ops.bn_act import bn_act_backward, bn_act_forward
from bioplaus.ops.conv import (
    IM2COL_MAX_BYTES,
    conv2d_backward,
    conv2d_forward,
    conv2d_input_grad,
    conv2d_transpose_backward,
    conv2d_transpose_forward,
)
from bioplaus.ops.dense import dense_backward, dense_forward
from bioplaus.ops.dropout import dropout_backward, dropout_forward, dropout_mask
from bioplaus.ops.losses import (
    count_correct,
    mse,
    sigmoid_bce_with_logits,
    softmax_cross_entropy,
    softmax_cross_entropy_forward,
)
from bioplaus.ops.pool import (
    avgpool2d_backward,
    avgpool2d_forward,
    decoder_pool_shape,
    maxpool2d_backward,
    maxpool2d_forward,
)
from bioplaus.ops.shape import flatten_backward, flatten_forward
from bioplaus.ops.similarity import label_similarity, similarity_backward, similarity_forward
from bioplaus.ops.winograd import winograd_conv3x3_backward, winograd_conv3x3_forward

__all__ = [
    "IM2COL_MAX_BYTES",
    "act_backward",
    "act_forward",
    "avgpool2d_backward",
    "avgpool2d_forward",
    "batchnorm_backward",
    "batchnorm_forward",
    "bn_act_backward",
    "bn_act_forward",
    "conv2d_backward",
    "conv2d_forward",
    "conv2d_input_grad",
    "conv2d_transpose_backward",
    "conv2d_transpose_forward",
    "count_correct",
    "decoder_pool_shape",
    "dense_backward",
    "dense_forward",
    "dropout_backward",
    "dropout_forward",
    "dropout_mask",
    "flatten_backward",
    "flatten_forward",
    "label_similarity",
    "maxpool2d_backward",
    "maxpool2d_forward",
    "mse",
    "sigmoid_bce_with_logits",
    "similarity_backward",
    "similarity_forward",
    "softmax_cross_entropy",
    "softmax_cross_entropy_forward",
    "winograd_conv3x3_backward",
    "winograd_conv3x3_forward",
]
