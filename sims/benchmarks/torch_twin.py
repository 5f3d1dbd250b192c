"""A PyTorch twin of a bioplaus network and learning rule, written for the speed benchmark only.

It follows the authors' semantics (Nøkland & Eidnes 2019, their public PyTorch code's structure,
re-written here from the paper's equations, not copied): every block is encoder -> BN -> φ ->
dropout (-> 2x2 max-pool); in the local rules each block's input is detached, each block owns an
Adam optimizer over its encoder, BN and head parameters, computes its local loss, calls
``backward()`` and steps at once; the output layer learns from the output cross-entropy (scaled
by 1-β in the predsim variants) on the detached last block output with its own Adam. ``glob`` is one
backward through the whole stack and one Adam over every parameter.

Heads (DESIGN §1): pred = dense decoder on the average-pooled h; sim = learned 3x3 conv (or dense),
no bias, then the similarity matrix vs that of the one-hot labels; pred-bpf = decoder to a binary
label code (sigmoid BCE) whose error reaches h through a fixed random matrix B (feedback
alignment, a custom autograd function); sim-bpf = similarity of the pooled h vs S(Y·P).

Shapes come from :func:`bioplaus.models.build_spec`, so the twin and the engine have identical
layers; the twin builds its own PyTorch layers for the dense and conv kinds by their names (an
independent implementation asks nothing of the engine's kind objects). Only this benchmark imports
torch; the ``bioplaus`` package never does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bioplaus.models import NetSpec
from bioplaus.rules import RULES, loss_weights


def similarity(x: torch.Tensor) -> torch.Tensor:
    """S(X): per-channel std for feature maps with C > 3 and H > 1, row-centred, normalised, X Xᵀ."""
    if x.dim() == 4 and x.size(1) > 3 and x.size(2) > 1:
        x = x.reshape(x.size(0), x.size(1), -1).std(dim=2)
    else:
        x = x.reshape(x.size(0), -1)
    xc = x - x.mean(dim=1, keepdim=True)
    xn = xc / (1e-8 + torch.sqrt((xc * xc).sum(dim=1, keepdim=True)))
    return (xn @ xn.t()).clamp(-1, 1)


class _FeedbackLinear(torch.autograd.Function):
    """y = x Wᵀ + b; the error to x goes through the fixed matrix B, not W (feedback alignment)."""

    @staticmethod
    def forward(ctx, x, W, b, B):
        ctx.save_for_backward(x, B)
        return F.linear(x, W, b)

    @staticmethod
    def backward(ctx, g):
        x, B = ctx.saved_tensors
        return g @ B, g.t() @ x, g.sum(0), None


class TwinBlock(nn.Module):
    def __init__(self, spec, rule, num_classes: int, target_proj_size: int, batch_norm: bool):
        super().__init__()
        self.spec, self.rule = spec, rule
        if spec.kind.name == "conv":
            self.enc = nn.Conv2d(spec.c_in, spec.c_out, spec.kernel, spec.stride, spec.pad)
            self.bn = nn.BatchNorm2d(spec.c_out) if batch_norm else None
        else:
            self.enc = nn.Linear(spec.c_in, spec.c_out)
            self.bn = nn.BatchNorm1d(spec.c_out) if batch_norm else None
        D = spec.dec_features
        if rule.pred == "exact":
            self.dec = nn.Linear(D, num_classes)
            nn.init.zeros_(self.dec.weight)
        elif rule.pred == "feedback":
            self.dec = nn.Linear(D, target_proj_size)
            nn.init.zeros_(self.dec.weight)
            nn.init.zeros_(self.dec.bias)
            self.register_buffer("B", torch.empty(target_proj_size, D).uniform_(-D**-0.5, D**-0.5))
        if rule.sim == "learned":
            self.sim = (nn.Conv2d(spec.c_out, spec.c_out, 3, 1, 1, bias=False) if spec.kind.name == "conv"
                        else nn.Linear(spec.c_out, spec.c_out, bias=False))
        if rule.pred == "feedback" or rule.sim == "direct":
            self.register_buffer("P", torch.empty(num_classes, target_proj_size).uniform_(
                -num_classes**-0.5, num_classes**-0.5))

    def forward(self, x, p_drop: float, slope: float):
        if self.spec.kind.name == "dense":
            x = x.reshape(x.size(0), -1)
        a = self.enc(x)
        if self.bn is not None:
            a = self.bn(a)
        h = F.leaky_relu(a, slope) if slope else F.relu(a)
        o = h
        if p_drop > 0:
            o = F.dropout2d(o, p_drop, True) if self.spec.kind.name == "conv" else F.dropout(o, p_drop, True)
        if self.spec.pool_after:
            o = F.max_pool2d(o, 2)
        return h, o

    def local_loss(self, h, y, Y, w_pred: float, w_sim: float):
        rule, spec = self.rule, self.spec
        pooled = h
        if spec.kind.name == "conv" and spec.dec_window != (1, 1) and (rule.pred or rule.sim == "direct"):
            pooled = F.avg_pool2d(h, spec.dec_window, spec.dec_window, spec.dec_pad)
        loss = h.new_zeros(())
        if rule.pred == "exact":
            loss = loss + w_pred * F.cross_entropy(self.dec(pooled.reshape(h.size(0), -1)), y)
        elif rule.pred == "feedback":
            logits = _FeedbackLinear.apply(pooled.reshape(h.size(0), -1), self.dec.weight, self.dec.bias, self.B)
            loss = loss + w_pred * F.binary_cross_entropy_with_logits(logits, (Y @ self.P > 0).to(h.dtype))
        if rule.sim == "learned":
            loss = loss + w_sim * F.mse_loss(similarity(self.sim(h)), similarity(Y))
        elif rule.sim == "direct":
            loss = loss + w_sim * F.mse_loss(similarity(pooled), similarity(Y @ self.P))
        return loss


class TorchTwin:
    """The twin of ``bioplaus`` for one spec and variant; ``step(x, y)`` is one training step."""

    def __init__(self, spec: NetSpec, variant: str, beta: float, dropout: float, slope: float,
                 target_proj_size: int = 128, lr: float = 1e-4):
        self.rule = RULES[variant]
        self.variant = variant
        self.w_pred, self.w_sim, self.w_out = loss_weights(variant, beta)
        self.dropout, self.slope = dropout, slope
        self.K = spec.num_classes
        self.blocks = nn.ModuleList(TwinBlock(b, self.rule, spec.num_classes, target_proj_size, spec.batch_norm)
                                    for b in spec.blocks)
        self.out = nn.Linear(spec.out_features_in, spec.num_classes)
        if self.rule.global_error:
            self.opts = [torch.optim.Adam([*self.blocks.parameters(), *self.out.parameters()], lr=lr)]
        else:  # one optimizer per block, as the authors
            self.opts = [torch.optim.Adam(b.parameters(), lr=lr) for b in self.blocks]
            self.opt_out = torch.optim.Adam(self.out.parameters(), lr=lr)
        self.blocks.train()

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        Y = F.one_hot(y, self.K).to(x.dtype)
        if self.rule.global_error:
            opt = self.opts[0]
            opt.zero_grad(set_to_none=True)
            for blk in self.blocks:
                _, x = blk(x, self.dropout, self.slope)
            loss = F.cross_entropy(self.out(x.reshape(x.size(0), -1)), y)
            loss.backward()
            opt.step()
            return loss.detach()
        for blk, opt in zip(self.blocks, self.opts):
            opt.zero_grad(set_to_none=True)
            h, o = blk(x.detach(), self.dropout, self.slope)  # the input is a constant
            blk.local_loss(h, y, Y, self.w_pred, self.w_sim).backward()
            opt.step()
            x = o.detach()
        self.opt_out.zero_grad(set_to_none=True)
        loss = F.cross_entropy(self.out(x.reshape(x.size(0), -1)), y)
        (self.w_out * loss).backward()
        self.opt_out.step()
        return loss.detach()
