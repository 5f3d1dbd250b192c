"""The run configuration: one frozen object, built from defaults, a recipe and flags.

Field names follow the authors' command-line flags (``--lr-decay-milestones`` ->
``lr_decay_milestones``) so their recipes carry over unchanged. ``Config.from_dict`` rejects
unknown keys and wrong types; ``Config.resolve`` fills the defaults that depend on other fields
(β on the variant, the learning-rate milestones on ``epochs``) and checks combinations. The resolved
configuration is written whole into the run log, so a log keeps the schedule it ran with.

The default schedule follows ``epochs`` in the paper's shape: the rate decays after 1/2, 3/4, 7/8 and
15/16 of the run (100 150 175 188 of 200 epochs), each rounded half up, without repeats and without
any that is not below ``epochs`` (a decay after the last epoch changes nothing). A recipe's (or a
logged run's) milestones given a new length are scaled as fractions of its own epochs
(:func:`scale_milestones`); where the layers of a configuration meet is :mod:`bioplaus.settings`.

A configuration is data: this module imports nothing of the engine, so the log, the analysis and the
sweep report read one (:meth:`Config.validate`) without loading it. Resolving one for a run
(:meth:`Config.resolve`) asks the engine, at that moment, for what it alone knows: the rules (a rule
registered at run time included) and their default β, the models and the convolution algorithms.

``conv_algorithm``: how 3x3 stride-1 convolutions are computed (:mod:`bioplaus.ops.conv`): "im2col",
"winograd" (Winograd's F(4x4, 3x3) for every one), a versioned rule such as "auto-cpu-2" (Winograd
where it measured faster on the CPU, im2col elsewhere), or "auto". A run resolves "auto" when it
starts, on its device (:func:`on_device`: the CPU's rule, or "winograd" on a GPU), and records what it
resolved to, so ``--resume`` computes as the run began, whatever "auto" means by then.
A log that records "auto" (or nothing) was written before that: "auto" then meant im2col on the CPU
and Winograd on a GPU, and no setting meant im2col; :func:`logged_config` reads it so.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

from bioplaus.errors import ConfigError

NONLINS = ("relu", "leakyrelu")
LOSS_UNSUP = ("none", "sim", "recon")
OPTIMS = ("adam", "amsgrad", "sgd")
DEVICES = ("auto", "cpu", "gpu")
INT_MAX = 2**31 - 1  # every integer setting fits a 32-bit int (HDF5 attributes, array shapes)
SEED_MAX = 2**32 - 1  # seeds key 32-bit random streams
__all__ = ["DEVICES", "NONLINS", "OPTIMS", "Config", "ConfigError", "default_milestones", "logged_config",
           "on_device", "scale_milestones", "unset_meaning"]

# The paper's schedule as fractions of the run (decay after 100 150 175 188 of its 200 epochs).
SCHEDULE_SHAPE = ((1, 2), (3, 4), (7, 8), (15, 16))
SCHEDULE_SHAPE_TEXT = "1/2, 3/4, 7/8 and 15/16 of --epochs (the paper's 100 150 175 188 of 200)"


def _beta_text() -> str:
    from bioplaus.rules import RULES  # the engine, asked when the text is wanted (help, a written config)

    betas: dict[float, list[str]] = {}
    for name, rule in RULES.items():
        betas.setdefault(rule.default_beta, []).append(name)
    usual = max(betas, key=lambda b: len(betas[b]))
    others = "; ".join(f"{b:g} for {', '.join(v)}" for b, v in betas.items() if b != usual)
    return f"the variant's: {usual:g}" + (f" ({others})" if others else "")


# What a field left at None means (the resolved value depends on other fields; β's on the rules:
# unset_meaning("beta")).
UNSET_MEANING = {
    "num_layers": "3 for the mlp (the paper's 3x1024), 1 after a vgg's convolutions",
    "lr_decay_milestones": "after " + SCHEDULE_SHAPE_TEXT,
    "data_dir": "none: $BIOPLAUS_DATA, the per-user cache, the system's dataset folders, then a download",
}


def unset_meaning(name: str, default: str = "none") -> str:
    """What leaving field ``name`` unset (None) means, in words."""
    return _beta_text() if name == "beta" else UNSET_MEANING.get(name, default)


def _below(values, epochs: int) -> tuple[int, ...]:
    """``values`` in order, without repeats and without any outside [1, epochs)."""
    out: list[int] = []
    for v in values:
        if 1 <= v < epochs and v not in out:
            out.append(v)
    return tuple(out)


def default_milestones(epochs: int) -> tuple[int, ...]:
    """The paper's schedule shape over ``epochs``: after 1/2, 3/4, 7/8, 15/16 of it, rounded half up
    (integers only: round(epochs·n/d) = floor((2·epochs·n + d) / 2d)); 200 -> (100, 150, 175, 188)."""
    return _below(((2 * epochs * n + d) // (2 * d) for n, d in SCHEDULE_SHAPE), epochs)


def scale_milestones(milestones, from_epochs: int, to_epochs: int) -> tuple[int, ...]:
    """Milestones written for a run of ``from_epochs`` as the same fractions of ``to_epochs`` (rounded
    half up, repeats and any not below ``to_epochs`` dropped): (100, 150, 175, 188) of 200 -> (5, 8, 9) of 10."""
    if from_epochs < 1:
        return _below(milestones, to_epochs)
    return _below(((2 * m * to_epochs + from_epochs) // (2 * from_epochs) for m in milestones), to_epochs)


@dataclass(frozen=True)
class Config:
    variant: str = "predsim"
    model: str = "mlp"
    dataset: str = "fashion-mnist-mini"
    epochs: int = 10
    batch_size: int = 128
    lr: float = 5e-4
    lr_decay_milestones: tuple[int, ...] | None = None  # None: the paper's shape over epochs (default_milestones)
    lr_decay_fact: float = 0.25
    optim: str = "adam"
    momentum: float = 0.0
    weight_decay: float = 0.0
    dropout: float = 0.0
    nonlin: str = "relu"
    beta: float | None = None  # None: the variant's default (DEFAULT_BETA), 0.99 otherwise
    num_layers: int | None = None  # None: 3 for the mlp (the paper's 3x1024), 1 after a vgg's convs
    num_hidden: int = 1024
    feat_mult: float = 1.0
    dim_in_decoder: int = 4096
    target_proj_size: int = 128
    batch_norm: bool = True
    cutout: bool = False
    cutout_length: int = 16
    classes_per_batch: int = 0
    classes_per_batch_until_epoch: int = 0
    seed: int = 1
    device: str = "auto"
    conv_algorithm: str = "auto"  # resolved per device when a run starts (module docstring), recorded resolved
    data_dir: str | None = None
    probe_every: int = 0  # every k epochs, log the angle between each block's update and backprop's
    loss_unsup: str = "none"  # the authors' unsupervised local loss: none, sim (S(h) vs S(x)) or recon
    alpha: float = 0.0  # weight of the unsupervised loss; the supervised ones get 1 - alpha
    no_similarity_std: bool = False  # S of flattened maps instead of per-channel standard deviations

    # ------------------------------------------------------------------ building
    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, values: dict[str, Any], base: Config | None = None) -> Config:
        """``base`` (or the defaults) overridden by ``values``; unknown keys and bad types fail."""
        base = base or cls()
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        clean = {}
        for key, value in values.items():
            if key not in types:
                raise ConfigError(f"unknown configuration key {key!r}")
            clean[key] = _coerce(key, value, types[key])
        return dataclasses.replace(base, **clean)

    def replace(self, **changes) -> Config:
        return Config.from_dict(changes, base=self)

    def resolve(self) -> Config:
        """Fill variant defaults and check every combination, against the engine too; returns a new Config."""
        # the engine, asked here only: reading a configuration (validate) loads none of it
        from bioplaus.models import MODELS
        from bioplaus.ops.conv import ALGORITHMS as CONV_ALGORITHMS  # how 3x3 stride-1 convolutions are computed
        from bioplaus.rules import RULES

        cfg = self
        if cfg.variant not in RULES:
            raise ConfigError(f"unknown variant {cfg.variant!r}; choose one of {', '.join(RULES)}")
        if cfg.model not in MODELS:
            raise ConfigError(f"unknown model {cfg.model!r}; choose one of {', '.join(MODELS)}")
        if cfg.conv_algorithm not in CONV_ALGORITHMS:
            raise ConfigError(f"unknown --conv-algorithm {cfg.conv_algorithm!r}; choose {', '.join(CONV_ALGORITHMS)}")
        rule = RULES[cfg.variant]
        if cfg.beta is None:  # as the authors ran each variant: predsim mostly sim, predsim-bpf mostly pred-bpf
            cfg = dataclasses.replace(cfg, beta=rule.default_beta)
        if cfg.num_layers is None:
            cfg = dataclasses.replace(cfg, num_layers=cfg.dense_layers)
        if cfg.lr_decay_milestones is None:
            cfg = dataclasses.replace(cfg, lr_decay_milestones=default_milestones(cfg.epochs))
        cfg.validate()
        if cfg.loss_unsup != "none" and not rule.heads:
            raise ConfigError(f"--loss-unsup adds a local loss to every block, and {cfg.variant} has no local "
                              "losses; use it with pred, sim, predsim, their -bpf or glob+ forms")
        return cfg

    def validate(self) -> None:
        """Every value in range and every combination possible that the configuration itself can tell
        (the names the engine defines are checked by :meth:`resolve`); ConfigError (one sentence) otherwise."""
        for name in ("variant", "model"):
            if not getattr(self, name).strip():
                raise ConfigError(f"--{name} needs a name")
        if self.nonlin not in NONLINS:
            raise ConfigError(f"unknown nonlinearity {self.nonlin!r}; choose relu or leakyrelu")
        if self.optim not in OPTIMS:
            raise ConfigError(f"unknown optimizer {self.optim!r}; choose adam, amsgrad or sgd")
        if self.device not in DEVICES:
            raise ConfigError(f"unknown device {self.device!r}; choose auto, cpu or gpu")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{_flag(f.name)} must be a finite number, not {value}")
            if isinstance(value, int) and not isinstance(value, bool) and f.name != "seed" and abs(value) > INT_MAX:
                raise ConfigError(f"{_flag(f.name)} {value} is too large (at most {INT_MAX})")
            if isinstance(value, tuple) and any(abs(v) > INT_MAX for v in value):
                raise ConfigError(f"{_flag(f.name)} {max(value, key=abs)} is too large (at most {INT_MAX})")
        positive = ("epochs", "batch_size", "num_hidden", "dim_in_decoder", "target_proj_size")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{_flag(name)} must be at least 1")
        if not 0 <= self.seed <= SEED_MAX:
            raise ConfigError(f"--seed must be between 0 and {SEED_MAX}, not {self.seed}")
        if self.dense_layers < 0 or (self.model == "mlp" and self.dense_layers < 1):
            raise ConfigError("--num-layers must be at least 1 for an mlp (0 or more for a vgg)")
        if not self.lr > 0:
            raise ConfigError("--lr must be positive")
        if not 0.0 < self.lr_decay_fact <= 1.0:
            raise ConfigError(f"--lr-decay-fact must be in (0, 1] (the factor the rate is multiplied by), "
                              f"not {self.lr_decay_fact:g}")
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"--momentum must be in [0, 1), not {self.momentum:g}")
        if self.weight_decay < 0:
            raise ConfigError(f"--weight-decay must not be negative, not {self.weight_decay:g}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError("--dropout must be in [0, 1)")
        if self.beta is not None and not 0.0 <= self.beta <= 1.0:
            raise ConfigError("--beta must be in [0, 1]")
        if self.feat_mult <= 0:
            raise ConfigError("--feat-mult must be positive")
        if self.model == "mlp" and self.feat_mult != 1.0:
            raise ConfigError("--feat-mult scales convolution channels and has no meaning for the mlp")
        milestones = self.lr_decay_milestones or ()
        if any(m < 1 for m in milestones):
            raise ConfigError("--lr-decay-milestones are epochs after which the rate decays: each at least 1")
        if list(milestones) != sorted(milestones):
            raise ConfigError("--lr-decay-milestones must be in increasing order")
        if self.classes_per_batch < 0 or self.classes_per_batch_until_epoch < 0:
            raise ConfigError("--classes-per-batch and its end epoch must not be negative")
        if self.classes_per_batch == 1:
            raise ConfigError("--classes-per-batch 1 would fill every batch with one class; use 0 (off) or 2 or more")
        if self.cutout and self.cutout_length < 1:
            raise ConfigError("--cutout-length must be at least 1 when cutout is on")
        if self.cutout_length < 0:
            raise ConfigError("--cutout-length must not be negative")
        if self.probe_every < 0:
            raise ConfigError("--probe-every must not be negative")
        if self.data_dir is not None and not self.data_dir.strip():
            raise ConfigError("--data-dir needs a folder name")
        if self.loss_unsup not in LOSS_UNSUP:
            raise ConfigError(f"unknown --loss-unsup {self.loss_unsup!r}; choose {', '.join(LOSS_UNSUP)}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"--alpha must be in [0, 1], not {self.alpha:g}")
        if self.alpha and self.loss_unsup == "none":
            raise ConfigError("--alpha weighs the unsupervised local loss: it needs --loss-unsup sim or recon")

    def check_dataset(self, num_classes: int, input_shape: tuple[int, ...], num_train: int | None = None) -> None:
        """Combinations that depend on the dataset (its class count, image size)."""
        if self.classes_per_batch > num_classes:
            raise ConfigError(f"--classes-per-batch {self.classes_per_batch} is more than the {num_classes} classes "
                              f"of {self.dataset}")
        if self.classes_per_batch and self.batch_size < self.classes_per_batch:
            raise ConfigError(f"--batch-size {self.batch_size} cannot hold {self.classes_per_batch} classes per batch")

    # ------------------------------------------------------------------ views
    @property
    def dense_layers(self) -> int:
        """Dense blocks: ``num_layers``, or by default 3 for the mlp and 1 after a vgg's convs."""
        if self.num_layers is not None:
            return self.num_layers
        return 3 if self.model == "mlp" else 1

    @property
    def milestones(self) -> tuple[int, ...]:
        """The milestones in effect: as set, or the default shape over ``epochs``."""
        if self.lr_decay_milestones is None:
            return default_milestones(self.epochs)
        return self.lr_decay_milestones

    def check_milestones_below_epochs(self) -> None:
        """Milestones a user typed must fall inside the run: a decay after its last epoch changes nothing."""
        late = [m for m in self.milestones if m >= self.epochs]
        if late:
            raise ConfigError(f"--lr-decay-milestones {late[0]} is not below --epochs {self.epochs}: the rate would "
                              f"decay only after the run's last epoch; give milestones below {self.epochs} (none "
                              "for a constant rate), or leave them out for the default, "
                              f"{' '.join(map(str, default_milestones(self.epochs))) or 'none'}")

    def schedule_text(self) -> str:
        """``5e-04, x0.25 after epochs 5 8 9``: the learning rate and its decays, for the run's header."""
        when = " ".join(map(str, self.milestones))
        return f"{self.lr:g}, x{self.lr_decay_fact:g} after epochs {when}" if when else f"{self.lr:g}, constant"

    def lr_at(self, epoch: int) -> float:
        """Learning rate of 1-based ``epoch``: decayed once for every milestone m < epoch."""
        passed = sum(1 for m in self.milestones if epoch - 1 >= m)
        return self.lr * self.lr_decay_fact**passed

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if self.lr_decay_milestones is not None:
            d["lr_decay_milestones"] = list(self.lr_decay_milestones)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Config:
        """A configuration from its JSON (checked for size and depth first: it may come from a file)."""
        from bioplaus.limits import loads

        values = loads(text, "the configuration")
        if not isinstance(values, dict):
            raise ConfigError("the configuration is not a JSON object")
        return cls.from_dict(values)


def on_device(cfg: Config, gpu: bool) -> Config:
    """``cfg`` as a run on a GPU (``gpu``) or the CPU records it: "auto" for ``conv_algorithm`` replaced by
    what it means there today (:func:`bioplaus.ops.conv.resolve_algorithm`), so that a resumed run
    computes as the run began whatever "auto" means by then. Anything else is left as it is."""
    from bioplaus.ops.conv import resolve_algorithm

    return dataclasses.replace(cfg, conv_algorithm=resolve_algorithm(cfg.conv_algorithm, gpu))


def logged_config(values: dict[str, Any], device: str | None = None) -> Config:
    """The configuration a run log (or checkpoint) records, as this bioplaus runs it: a log written
    before runs resolved ``conv_algorithm`` when they started holds "auto", which computed by im2col
    on the CPU and by Winograd on a GPU (``device``, the log's device attribute, says which), or no
    setting at all (older still: im2col everywhere). Raises ConfigError for a bad configuration."""
    if not isinstance(values, dict):
        raise ConfigError(f"a configuration is a table of settings, not {type(values).__name__}")
    values = dict(values)
    algorithm = values.get("conv_algorithm")
    if algorithm is None:
        values["conv_algorithm"] = "im2col"
    elif algorithm == "auto":
        values["conv_algorithm"] = "winograd" if str(device or "").startswith("gpu") else "im2col"
    return Config.from_dict(values)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _coerce(key: str, value: Any, annotation: str) -> Any:
    """Check ``value`` against a field's annotation (a string under postponed evaluation)."""
    flag = "--" + key.replace("_", "-")
    ann = str(annotation)
    if value is None:
        if "None" in ann:
            return None
        raise ConfigError(f"{flag} needs a value")
    if ann.startswith("tuple"):
        if isinstance(value, (int,)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            raise ConfigError(f"{flag} takes a list of integers, not {value!r}")
        return tuple(value)
    if ann.startswith("bool"):
        if not isinstance(value, bool):
            raise ConfigError(f"{flag} is true or false, not {value!r}")
        return value
    if ann.startswith("int"):
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{flag} takes an integer, not {value!r}")
        return value
    if ann.startswith("float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{flag} takes a number, not {value!r}")
        try:
            return float(value)
        except OverflowError:  # an integer too large for a float: not a finite number
            raise ConfigError(f"{flag} must be a finite number, not {str(value)[:20]}...") from None
    if ann.startswith("str"):
        if not isinstance(value, str):
            raise ConfigError(f"{flag} takes text, not {value!r}")
        return value
    return value
