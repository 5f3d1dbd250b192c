"""Every variant learns: a small mlp and a small conv net on the embedded Fashion-MNIST subset.

Measured on this project's 2-core machine, one BLAS thread (3,000 training images = every other
image of fashion-mnist-mini, 1,000 test images, seed 1; the SETUPS below):

    variant       mlp 2x128, 3 epochs   vgg6b/16, 2 epochs     (test error %, chance = 90)
    glob              24.8                  27.0
    pred              30.0                  37.4
    sim               28.2                  43.1
    predsim           29.0                  42.6
    pred-bpf          30.1                  44.7
    sim-bpf           31.3                  37.0
    predsim-bpf       29.6                  41.0
    glob+sim          26.7                  33.7
    glob+pred         28.9                  29.7
    glob+predsim      28.0                  32.2
    fa                30.9                  56.2
    sign-symmetry     26.5                  32.0
    kolen-pollack     29.0                  48.9
    dfa               30.3                  59.3
    drtp              34.0                  59.4

The assertions leave a wide margin (40 % mlp, 60 % conv) so that they test learning, not luck. Rules
that send the error through fixed random matrices (fa, dfa, drtp) train a conv net slowly in its first
epochs, as the literature reports (Bartunov et al. 2018; Launay et al. 2019); their conv bound is 70 %,
still far from chance.
"""

from __future__ import annotations

import dataclasses
import math

import pytest

from bioplaus.backend import NUMPY
from bioplaus.config import Config
from bioplaus.data import TrainBatches, load_dataset
from bioplaus.rules import VARIANTS, train_step
from bioplaus.train import Trainer

SETUPS = {
    "mlp": {"model": "mlp", "num_layers": 2, "num_hidden": 128, "epochs": 3, "lr": 1e-3, "lr_decay_milestones": ()},
    "conv": {"model": "vgg6b", "feat_mult": 0.0625, "num_layers": 0, "epochs": 2, "lr": 2e-3, "lr_decay_milestones": (),
                 "dim_in_decoder": 512},
}
BOUND = {"mlp": 40.0, "conv": 60.0}
SLOW_ON_CONV = {"fa", "dfa", "drtp"}  # a random feedback path: slow to align in a conv net (docstring)


@pytest.fixture(scope="module")
def small_data():
    ds = load_dataset("fashion-mnist-mini")
    return dataclasses.replace(ds, x_train=ds.x_train[::2], y_train=ds.y_train[::2])


@pytest.mark.parametrize("kind", ["mlp", "conv"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_learns(variant, kind, small_data):
    cfg = Config(variant=variant, **SETUPS[kind]).resolve()
    trainer = Trainer(cfg, NUMPY, small_data)
    first = trainer.train_epoch()
    for _ in range(cfg.epochs - 1):
        last = trainer.train_epoch()
    ev = trainer.evaluate()
    bound = 70.0 if kind == "conv" and variant in SLOW_ON_CONV else BOUND[kind]
    assert ev["test_error"] < bound, ev["test_error"]
    assert last["train_error"] < first["train_error"]
    for name, layer in ev["layers"].items():  # local predictors learn too (pred variants)
        if "error_pred" in layer:
            assert layer["error_pred"] < 70.0, (name, layer["error_pred"])


def test_first_loss_is_about_ln_classes(small_data):
    """A local-variant output layer starts at zero weights (small random bias): first loss ≈ ln 10."""
    cfg = Config(variant="predsim", **SETUPS["mlp"]).resolve()
    trainer = Trainer(cfg, NUMPY, small_data)
    x, y = next(iter(TrainBatches(small_data, NUMPY, 128, 1).epoch(1)))
    step = train_step(trainer.net, cfg.variant, cfg.beta, x, y, [None, None], lambda i, g: None)
    loss, stats = step.loss, step.stats
    assert abs(float(loss) - math.log(10)) < 0.05
    assert abs(float(stats["fc1"]["loss_pred"]) - math.log(10)) < 0.2  # zero decoder weights, small random bias


def test_a_tiny_set_can_be_overfit(small_data):
    tiny = dataclasses.replace(small_data, x_train=small_data.x_train[:64], y_train=small_data.y_train[:64])
    cfg = Config(variant="predsim", model="mlp", num_layers=1, num_hidden=256, epochs=60, lr=3e-3,
                 lr_decay_milestones=(), batch_size=64).resolve()
    trainer = Trainer(cfg, NUMPY, tiny)
    trainer.batches = TrainBatches(tiny, NUMPY, 64, cfg.seed, augment=False)  # memorise the images themselves
    for _ in range(cfg.epochs):
        stats = trainer.train_epoch()
    assert trainer.evaluate(split="train")["test_error"] < 5.0, stats
