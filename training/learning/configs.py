"""Configuration of a training run: every ``learning`` config dataclass and the YAML reader.

A run is one :class:`TrainConfig` (YAML file, documented key by key in docs/training.md) with
the sections ``data`` (:class:`DataConfig`), ``model`` (:class:`ModelConfig`), ``loss``
(:class:`LossConfig`), ``optim`` (:class:`OptimConfig`), ``trainer`` (:class:`TrainerConfig`)
``prior`` (:class:`PriorConfig`) and ``thermal`` (:class:`ThermalConfig`, the temperature-aware
mode ``loss.mode: thermal``, docs/thermo.md §8). :func:`load_config` reads the YAML file and applies
``key.sub=value`` overrides; an unknown key anywhere raises ``ValueError`` naming its section.
"""

from __future__ import annotations

import math
import numbers
import os
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import yaml

from hessid.cli.options import read_yaml_mapping
from hessid.training.learning.derivatives import HVP_METHODS

__all__ = [
    "HVP_ESTIMATORS",
    "LOSS_MODES",
    "RESIDUALS",
    "DataConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "PriorConfig",
    "TrainConfig",
    "TrainerConfig",
    "THERMAL_FORMS",
    "ThermalConfig",
    "dataclass_from_dict",
    "load_config",
    "validate_fields",
]

LOSS_MODES = ("fm", "fm_hvp", "fm_hessian", "thermal")
#: free-energy forms of the temperature-aware model (docs/thermo.md §8, spec thermo.md §5)
THERMAL_FORMS = ("M0", "M1", "M2", "M3")
#: networks under a temperature-aware model: CGSchNet (any protein) or an MLP on the
#: coordinates of a fixed number of beads (low-dimensional toys such as T2)
THERMAL_BACKBONES = ("schnet", "mlp")
HVP_ESTIMATORS = ("frame", "rao_blackwell")
#: where the force residual dF of Term 2 comes from (``LossConfig.residual``)
RESIDUALS = ("online", "crossfit")

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def dataclass_from_dict(cls, d: dict | None, what: str):
    """``cls(**d)`` for a dataclass ``cls``, refusing keys that are not its fields.

    Args:
        cls: a dataclass type.
        d: its fields as a dict (None: all defaults).
        what: start of the error message, e.g. ``"unknown loss keys"``.

    Returns:
        the dataclass instance.

    Raises:
        ValueError: ``what`` followed by the unknown keys and the known ones.
    """
    d = dict(d or {})
    known = set(cls.__dataclass_fields__)
    unknown = set(d) - known
    if unknown:
        raise ValueError(f"{what} {sorted(unknown)}; known: {sorted(known)}")
    return cls(**d)


def _from_dict(cls, d, section):
    return dataclass_from_dict(cls, d, f"unknown keys in `{section}`:")


# ----------------------------------------------------------------------------- validation
# Every field is type-checked and range-checked when its dataclass is built: a bad value is
# refused with a ValueError naming its dotted key (``optim.lr: expected a number, got 'fast'``),
# never clamped, so a run folder is only created for a config that can run.

#: (section, field) → (test, what it must be); a field absent here is only type-checked
_RANGES: dict[tuple[str, str], tuple[typing.Callable[[typing.Any], bool], str]] = {
    ("", "seed"): (lambda v: v >= 0, ">= 0"),
    ("", "hvp_start_step"): (lambda v: v >= 0, ">= 0"),
    ("", "cov_ramp_steps"): (lambda v: v >= 0, ">= 0"),
    ("data", "batch_size"): (lambda v: v >= 1, ">= 1"),
    ("data", "max_frames"): (lambda v: v is None or v >= 1, ">= 1 (or null: all frames)"),
    ("data", "val_fraction"): (lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
    ("model", "embedding_dimension"): (lambda v: v >= 1, ">= 1"),
    ("model", "num_layers"): (lambda v: v >= 1, ">= 1"),
    ("model", "num_rbf"): (lambda v: v >= 1, ">= 1"),
    ("model", "rbf_type"): (lambda v: v in ("expnorm", "gauss"), "'expnorm' or 'gauss'"),
    ("model", "max_num_neighbors"): (lambda v: v >= 1, ">= 1"),
    ("optim", "lr"): (lambda v: 0.0 < v < math.inf, "a finite number > 0"),
    ("optim", "weight_decay"): (lambda v: 0.0 <= v < math.inf, ">= 0"),
    ("optim", "warmup_steps"): (lambda v: v >= 0, ">= 0"),
    ("optim", "min_lr_ratio"): (lambda v: 0.0 <= v <= 1.0, "in [0, 1]"),
    ("optim", "gamma_per_1000"): (lambda v: 0.0 < v <= 1.0, "in (0, 1]"),
    ("optim", "grad_clip"): (lambda v: 0.0 <= v < math.inf, ">= 0 (0 = off)"),
    ("trainer", "max_steps"): (lambda v: v >= 1, ">= 1"),
    ("trainer", "val_every_steps"): (lambda v: v >= 1, ">= 1"),
    ("trainer", "checkpoint_every_steps"): (lambda v: v >= 1, ">= 1"),
    ("trainer", "early_stopping_patience"): (lambda v: v >= 0, ">= 0 (0 = off)"),
    ("trainer", "accelerator"): (lambda v: v in ("cpu", "gpu", "cuda", "mps", "auto"),
                                 "'cpu', 'gpu' or 'auto'"),
    ("trainer", "devices"): (lambda v: v >= 1, ">= 1"),
    ("trainer", "num_nodes"): (lambda v: v >= 1, ">= 1"),
    ("trainer", "hvp_probe_chunk"): (lambda v: v is None or v >= 1, ">= 1 (or null: all probes)"),
    ("trainer", "log_every_n_steps"): (lambda v: v >= 1, ">= 1"),
    ("trainer", "hvp_method"): (lambda v: v in HVP_METHODS, f"one of {', '.join(HVP_METHODS)}"),
    ("prior", "n_fourier"): (lambda v: v >= 0, ">= 0"),
    ("prior", "repulsion_scale"): (lambda v: 0.0 < v < math.inf, "a finite number > 0"),
}


def _coerce(value, hint, key: str):
    """``value`` checked against the type ``hint`` of config key ``key`` (a numeric string
    such as YAML's ``1e-3`` becomes a float; an integral number an int).

    Raises:
        ValueError: ``"KEY: expected WHAT, got VALUE"``.
    """
    args = typing.get_args(hint)
    if type(None) in args:  # X | None
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
    if hint is bool:
        if isinstance(value, bool):
            return value
        what = "true or false"
    elif hint is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return int(value)
        what = "an integer"
    elif hint is float:
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            if math.isnan(float(value)):
                raise ValueError(f"{key}: expected a number, got NaN")
            return float(value)
        if isinstance(value, str):
            try:
                return _coerce(float(value), float, key)
            except ValueError:
                pass
        what = "a number"
    elif hint is str:
        if isinstance(value, str):
            return value
        what = "a string"
    elif hint is list or typing.get_origin(hint) is list:
        if isinstance(value, list | tuple):
            return list(value)
        what = "a list"
    else:
        return value
    raise ValueError(f"{key}: expected {what}, got {value!r}")


def validate_fields(obj, section: str = "") -> None:
    """Type-check and range-check every field of a config dataclass in place.

    Args:
        obj: a config dataclass instance (numeric strings are converted in place).
        section: its YAML section (``"optim"``; ``""`` for the top level), used in messages.

    Raises:
        ValueError: one line naming the dotted key, what it must be and the value given
            (``data.batch_size: must be >= 1, got -4``).
    """
    hints = typing.get_type_hints(type(obj))
    for f in fields(obj):
        hint = hints[f.name]
        if isinstance(hint, type) and hasattr(hint, "__dataclass_fields__"):
            continue  # a section: validated by its own __post_init__
        key = f"{section}.{f.name}" if section else f.name
        value = _coerce(getattr(obj, f.name), hint, key)
        setattr(obj, f.name, value)
        rule = _RANGES.get((section, f.name))
        if rule is not None and not rule[0](value):
            raise ValueError(f"{key}: must be {rule[1]}, got {value!r}")


@dataclass
class ModelConfig:
    """CGSchNet hyper-parameters (TorchMD-Net ``create_model`` names).

    Attributes:
        embedding_dimension: channels of node features and filters (64).
        num_layers: interaction blocks (4).
        num_rbf: radial basis functions (12).
        rbf_type: ``"expnorm"`` (exponential-normal) or ``"gauss"``.
        trainable_rbf: whether RBF centres/widths are trained (False).
        activation: ``"silu"`` (the exact fast-HVP path supports silu only).
        cutoff_lower: lower cutoff, Å (3.0): pairs closer than this are left to the prior.
        cutoff_upper: upper cutoff, Å (12.0).
        max_num_neighbors: TorchMD-Net neighbour cap per bead; must be ≥ the largest bead
            count, checked at every call, so no pair inside the cutoff is ever dropped (512).
        neighbor_embedding: TorchMD-Net's neighbour embedding step (False: plain SchNet).
        precision: ``"float32"`` or ``"float64"``.
    """

    embedding_dimension: int = 64
    num_layers: int = 4
    num_rbf: int = 12
    rbf_type: str = "expnorm"
    trainable_rbf: bool = False
    activation: str = "silu"
    cutoff_lower: float = 3.0
    cutoff_upper: float = 12.0
    max_num_neighbors: int = 512
    neighbor_embedding: bool = False
    precision: str = "float32"

    def __post_init__(self):
        validate_fields(self, "model")

    @classmethod
    def from_dict(cls, d: dict | None) -> ModelConfig:
        """Build from a dict; unknown keys raise ``ValueError`` naming them."""
        cfg = dataclass_from_dict(cls, d, "unknown model config keys")
        if cfg.precision not in _DTYPES:
            raise ValueError(f"precision must be one of {sorted(_DTYPES)}, got {cfg.precision!r}")
        if not 0 <= cfg.cutoff_lower < cfg.cutoff_upper:
            raise ValueError(f"need 0 <= cutoff_lower < cutoff_upper, got "
                             f"{cfg.cutoff_lower}, {cfg.cutoff_upper}")
        return cfg

    @property
    def dtype(self) -> torch.dtype:
        """``torch.float32`` or ``torch.float64`` (from ``precision``)."""
        return _DTYPES[self.precision]

    def torchmdnet_args(self, n_types: int) -> dict:
        """Arguments of :func:`torchmdnet.models.model.create_model` for a CGSchNet
        (``graph-network``, ``Scalar`` head) over ``n_types`` bead types."""
        return dict(
            model="graph-network", embedding_dimension=self.embedding_dimension,
            num_layers=self.num_layers, num_rbf=self.num_rbf, rbf_type=self.rbf_type,
            trainable_rbf=self.trainable_rbf, activation=self.activation,
            cutoff_lower=self.cutoff_lower, cutoff_upper=self.cutoff_upper, max_z=max(n_types, 1),
            max_num_neighbors=self.max_num_neighbors, aggr="add",
            neighbor_embedding=self.neighbor_embedding, precision=int(self.precision.removeprefix("float")),
            derivative=False, atom_filter=-1, prior_model=None, output_model="Scalar",
            reduce_op="sum", output_mlp_num_layers=0,
        )


@dataclass
class LossConfig:
    """Loss settings (YAML ``loss:`` section; see docs/training.md).

    Attributes:
        mode: ``"fm"``, ``"fm_hvp"``, ``"fm_hessian"`` or ``"thermal"`` (temperature-aware
            model, L_F per temperature + w_U L_U, each over its noise floor; the ``thermal``
            section, docs/thermo.md §8).
        lambda_force: λ_F, weight of the (normalised) FM loss.
        lambda_hvp: λ_H, weight of the (normalised) HVP or Hessian loss.
        lambda_energy: weight of the energy loss (0: off; AA energies only make sense when the
            CG map keeps all atoms, e.g. the PHL comparison).
        cov_weight: γ in ``h = Term1 − γ β dF (dF·v)``; 0 = FM+AA, 1 = FM+AA+Cov.
        hvp_estimator: ``"frame"`` (the per-frame target loss, docs/identities.md §5) or
            ``"rao_blackwell"`` (its probe-noisy cross term replaced by the probe expectation,
            one extra HVP along dF; docs/variance_reduction.md, docs/training.md). Used by
            ``mode="fm_hvp"``; identical losses when γ = 0.
        rb_stabiliser: α ∈ [0, 1) of the zero-mean term that bounds the Rao–Blackwellised loss
            below with fixed probes (0.5; 0 = plain L_RB, unbounded below when k < 3n).
        hvp_project_bonds: project the bond-stretch directions of each frame's chain out of
            the HVP residual (``fm_hvp``; the prior fits the bonds). False by default.
        normalise: divide each term by its value for a model with zero outputs, averaged over
            the training frames.
        norm_includes_term2: ``hvp_norm`` / ``hessian_norm`` include Term 2 at ``cov_weight``
            (``mean c·‖Term1 v − γβ P f (P f·v)‖²``, True) or Term 1 only (False: the behaviour
            before this option; then λ_H weighs a term that starts ~(1 + Term 2/Term 1) above 1).
        force_norm, hvp_norm, hessian_norm, energy_norm: those means (filled from the training
            data by the trainer; units (kcal/mol/Å)², (kcal/mol/Å²)², (kcal/mol/Å²)²,
            (kcal/mol)²). None = 1.
        residual: where Term 2's force residual dF comes from: ``"online"`` (``P f − F_θ(R)``
            of the model being trained, same forward pass) or ``"crossfit"`` (a fixed, stored
            ``P f − F^{(−k)}(R)`` from a force-matching model that did not train on the frame,
            :func:`hessid.training.learning.crossfit.crossfit_residuals`; used by both HVP
            estimators, ``fm_hessian`` and the Term-2 part of ``hvp_norm``/``hessian_norm``;
            docs/training.md "Cross-fitted residual").
        residual_file: the ``.npz`` written by ``crossfit_residuals`` (needed by, and only
            allowed with, ``residual="crossfit"``; relative paths as ``data.datasets``).
    """

    mode: str = "fm"
    lambda_force: float = 1.0
    lambda_hvp: float = 1.0
    lambda_energy: float = 0.0
    cov_weight: float = 0.0
    hvp_estimator: str = "frame"
    rb_stabiliser: float = 0.5
    hvp_project_bonds: bool = False
    normalise: bool = True
    norm_includes_term2: bool = True
    force_norm: float | None = None
    hvp_norm: float | None = None
    hessian_norm: float | None = None
    energy_norm: float | None = None
    residual: str = "online"
    residual_file: str | None = None

    def __post_init__(self):
        validate_fields(self, "loss")
        if self.mode not in LOSS_MODES:
            raise ValueError(f"loss mode must be one of {LOSS_MODES}, got {self.mode!r}")
        if not 0.0 <= float(self.cov_weight) <= 1.0:
            raise ValueError(f"cov_weight must lie in [0, 1], got {self.cov_weight}")
        if self.hvp_estimator not in HVP_ESTIMATORS:
            raise ValueError(f"hvp_estimator must be one of {HVP_ESTIMATORS}, got "
                             f"{self.hvp_estimator!r}")
        if not 0.0 <= float(self.rb_stabiliser) < 1.0:
            raise ValueError(f"rb_stabiliser must lie in [0, 1), got {self.rb_stabiliser}")
        for name in ("lambda_force", "lambda_hvp", "lambda_energy"):
            if float(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.residual not in RESIDUALS:
            raise ValueError(f"loss.residual must be one of {RESIDUALS}, got {self.residual!r}")
        if self.residual == "crossfit" and not self.residual_file:
            raise ValueError("loss.residual=crossfit needs loss.residual_file (the .npz of "
                             "`crossfit_residuals`)")
        if self.residual == "online" and self.residual_file:
            raise ValueError(f"loss.residual_file={self.residual_file!r} is only read with "
                             "loss.residual=crossfit")
        if self.residual == "crossfit" and self.mode == "fm":
            raise ValueError("loss.residual=crossfit has no effect with loss.mode=fm (no Term 2)")

    @classmethod
    def from_dict(cls, d: dict | None) -> LossConfig:
        """Build from a dict; unknown keys raise ``ValueError`` naming them."""
        return dataclass_from_dict(cls, d, "unknown loss keys")

    def to_dict(self) -> dict:
        """The fields as a plain dict."""
        return asdict(self)

    def norm(self, name: str) -> float:
        """Divisor of the ``name`` term (``"force"``, ``"hvp"``, ``"hessian"``, ``"energy"``):
        its ``<name>_norm`` when ``normalise`` and set, else 1."""
        value = getattr(self, f"{name}_norm")
        return float(value) if (self.normalise and value) else 1.0


@dataclass
class DataConfig:
    """``data:`` section.

    Attributes:
        datasets: dataset files (one HDF5 per protein); relative paths are looked up in the
            working directory, then next to the YAML file.
        split: ``"frames"`` (random frames of every protein go to validation) or
            ``"protein"`` (whole proteins named in ``val_proteins`` go to validation).
        val_fraction: fraction of frames held out with ``split: frames`` (0–1).
        val_proteins: protein names (root attr ``name``) held out with ``split: protein``.
        val_datasets: separate validation files (every frame validates, FM loss only; they need
            no Term 1). When given, every usable frame of ``datasets`` trains and ``split`` /
            ``val_fraction`` / ``val_proteins`` are not used. For a held-out run whose frames
            must never be trained on (docs/training.md, "Validation files").
        batch_size: frames per optimizer step, over all ranks (must divide by the rank count).
        max_frames: use at most this many frames per protein (first ones; None = all).
    """

    datasets: list = field(default_factory=list)
    split: str = "frames"
    val_fraction: float = 0.1
    val_proteins: list = field(default_factory=list)
    val_datasets: list = field(default_factory=list)
    batch_size: int = 16
    max_frames: int | None = None

    def __post_init__(self):
        validate_fields(self, "data")


@dataclass
class OptimConfig:
    """``optim:`` section.

    Attributes:
        lr: peak learning rate of AdamW (1/step units of θ).
        weight_decay: AdamW decoupled weight decay.
        schedule: ``"constant"``, ``"cosine"`` (to ``min_lr_ratio·lr`` at ``max_steps``) or
            ``"exponential"`` (``gamma_per_1000`` per 1000 steps).
        warmup_steps: linear LR warm-up steps.
        min_lr_ratio: final LR / peak LR for ``cosine``.
        gamma_per_1000: decay factor per 1000 steps for ``exponential``.
        grad_clip: gradient-norm clip (0 = off).
    """

    lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: str = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    gamma_per_1000: float = 0.5
    grad_clip: float = 10.0

    def __post_init__(self):
        validate_fields(self, "optim")


@dataclass
class TrainerConfig:
    """``trainer:`` section.

    Attributes:
        max_steps: optimizer steps.
        val_every_steps: validate every this many steps.
        checkpoint_every_steps: write ``checkpoints/last.ckpt`` every this many steps.
        early_stopping_patience: stop after this many validations without a better val FM
            loss (0 = off).
        accelerator: ``"cpu"``, ``"gpu"`` or ``"auto"``.
        devices: devices per node (DDP when > 1).
        num_nodes: nodes (DDP when > 1).
        progress_bar: show Lightning's progress bar.
        hvp_probe_chunk: probes per batched double backward (memory bound; None = all k).
        plateau_window_steps: plateau stopping on the validation FM loss (0 = off): stop at the
            first validation where the last counted improvement is at least this many steps old ...
        plateau_budget_factor: ... and the step is at least this factor × the step of that
            improvement (the "budget 1.5 × the plateau step" rule; docs/training.md).
        plateau_rel_delta: an improvement counts when the loss falls below (1 − plateau_rel_delta)
            × the last counted value (0: every new minimum counts).
        keep_best: the saved model holds the weights of the best validation FM loss (not the
            last step's).
        compile: run the edge-list energy/forces/HVP kernel under ``torch.compile``
            (:func:`hessid.training.learning.derivatives.set_compile`; off by default: ~2 min
            of compilation, repaid after ~100 steps at 35 beads, ~3000 at 5 beads;
            docs/training.md "HVP cost").
        log_every_n_steps: log the training terms (and write their ``metrics.csv`` row) every
            this many optimizer steps (1: every step). Each step's logging costs a fixed
            overhead that matters for tiny systems (docs/training.md "Logging").
        hvp_method: how the HVPs go through the network (all exact, they differ in cost):
            ``"auto"`` picks ``"edges"`` or ``"dense"`` by size with the crossover measured on
            CPUs (:func:`~hessid.training.learning.derivatives.choose_hvp_method`); set
            ``"edges"`` or ``"dense"`` where your hardware's crossover differs (GPUs: measure
            with ``benchmarks/hvp_step.py --methods edges,dense``); ``"double_backward"`` is
            the slow independent reference.
    """

    max_steps: int = 1000
    val_every_steps: int = 100
    checkpoint_every_steps: int = 100
    early_stopping_patience: int = 10
    accelerator: str = "cpu"
    devices: int = 1
    num_nodes: int = 1
    progress_bar: bool = True
    hvp_probe_chunk: int | None = None
    plateau_window_steps: int = 0
    plateau_budget_factor: float = 1.5
    plateau_rel_delta: float = 0.0
    keep_best: bool = False
    compile: bool = False
    log_every_n_steps: int = 1
    hvp_method: str = "auto"

    def __post_init__(self):
        validate_fields(self, "trainer")
        if not 0.0 <= float(self.plateau_rel_delta) < 1.0:
            raise ValueError(f"trainer.plateau_rel_delta must lie in [0, 1), got {self.plateau_rel_delta}")
        if int(self.plateau_window_steps) < 0 or float(self.plateau_budget_factor) < 1.0:
            raise ValueError("trainer.plateau_window_steps must be >= 0 and plateau_budget_factor >= 1, got "
                             f"{self.plateau_window_steps}, {self.plateau_budget_factor}")


@dataclass
class PriorConfig:
    """``prior:`` section: the Boltzmann-inverted prior of
    :class:`hessid.training.learning.priors.PriorFit`, fitted on the training frames.

    Attributes:
        enabled: fit the prior and add it to the network energy (False: network only).
        n_fourier: Fourier terms of the dihedral prior (``a_n cos nφ + b_n sin nφ``, n ≤ this).
        repulsion_scale: repulsion σ as a multiple of the smallest non-bonded distance seen in
            the training data (dimensionless).
    """

    enabled: bool = True
    n_fourier: int = 3
    repulsion_scale: float = 1.0

    def __post_init__(self):
        validate_fields(self, "prior")


@dataclass
class ThermalConfig:
    """``thermal:`` section: the temperature-aware model and its losses (``loss.mode: thermal``;
    docs/thermo.md §8, spec thermo.md §3–§5).

    Attributes:
        form: ``"M1"`` (E − TS + b), ``"M2"`` (adds C[(T − T0) − T ln(T/T0)]), ``"M3"``
            (generic: the network sees τ = ln(T/T0)) or ``"M0"`` (the T-unaware control
            A = E(R) + b0: β-independent, L_U refused).
        backbone: ``"schnet"`` (CGSchNet representation, the ``model`` section) or ``"mlp"``
            (an MLP on the first ``mlp_dims`` coordinates of each of a fixed number of beads;
            low-dimensional toys).
        reference_temperature: T0 of M2 and of τ, K.
        rank: M3 with the schnet backbone: A = Σ_k g_k(τ) h_k(R), k ≤ rank.
        hidden: width of the heads / the MLP.  mlp_layers: hidden layers of the MLP.
        mlp_dims: coordinates per bead the MLP sees (1–3).
        energy_weight: w_U of L_U (0: forces only; refused > 0 for a β-independent model).
        force_floors, energy_floors: noise floors per temperature ``{T_K: value}``
            ((kcal/mol/Å)², (kcal/mol)²); None = estimated from the training frames by
            nearest-neighbour differences (:func:`~hessid.training.learning.thermal_losses.estimate_noise_floors`).
    """

    form: str = "M2"
    backbone: str = "schnet"
    reference_temperature: float = 300.0
    rank: int = 8
    hidden: int = 64
    mlp_layers: int = 2
    mlp_dims: int = 3
    energy_weight: float = 1.0
    force_floors: dict | None = None
    energy_floors: dict | None = None

    def __post_init__(self):
        validate_fields(self, "thermal")
        if self.form not in THERMAL_FORMS:
            raise ValueError(f"thermal.form must be one of {THERMAL_FORMS}, got {self.form!r}")
        if self.backbone not in THERMAL_BACKBONES:
            raise ValueError(f"thermal.backbone must be one of {THERMAL_BACKBONES}, got {self.backbone!r}")
        if not 0 < self.reference_temperature < math.inf:
            raise ValueError(f"thermal.reference_temperature must be > 0 K, got {self.reference_temperature}")
        if self.rank < 1 or self.hidden < 1 or self.mlp_layers < 1 or not 1 <= self.mlp_dims <= 3:
            raise ValueError("thermal: need rank, hidden, mlp_layers >= 1 and mlp_dims in 1..3, got "
                             f"{self.rank}, {self.hidden}, {self.mlp_layers}, {self.mlp_dims}")
        if not 0 <= self.energy_weight < math.inf:
            raise ValueError(f"thermal.energy_weight must be >= 0, got {self.energy_weight}")
        for name in ("force_floors", "energy_floors"):
            v = getattr(self, name)
            if v is not None:
                try:
                    v = {float(k): float(x) for k, x in dict(v).items()}
                except (TypeError, ValueError) as exc:
                    raise ValueError(f"thermal.{name}: expected {{temperature_K: value}}, got {v!r}") from exc
                if not v or not all(t > 0 and x > 0 for t, x in v.items()):
                    raise ValueError(f"thermal.{name}: temperatures and floors must be > 0, got {v}")
                setattr(self, name, v)


@dataclass
class TrainConfig:
    """A training run (YAML file; documented key by key in docs/training.md).

    Attributes:
        name: run name; outputs go to ``<output_dir>/<name>/``.
        output_dir: parent of run directories.
        seed: seeds model init, data order and split.
        skip_verification: skip the verification gate (loudly).
        hvp_start_step: train FM only before this step (then switch on the HVP/Hessian term).
        cov_ramp_steps: ramp γ linearly from 0 to ``loss.cov_weight`` over this many steps
            after ``hvp_start_step`` (the Term-2 estimate uses the model force, poor early).
        data, model, loss, optim, trainer, prior, thermal: the sections (:class:`DataConfig`,
            :class:`ModelConfig`, :class:`LossConfig`, :class:`OptimConfig`,
            :class:`TrainerConfig`, :class:`PriorConfig`, :class:`ThermalConfig`).
    """

    name: str = "run"
    output_dir: str = "runs"
    seed: int = 0
    skip_verification: bool = False
    hvp_start_step: int = 0
    cov_ramp_steps: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)
    thermal: ThermalConfig = field(default_factory=ThermalConfig)

    def __post_init__(self):
        validate_fields(self)
        name = self.name
        if not name or name in (".", "..") or "/" in name or "\\" in name or name != name.strip():
            raise ValueError(f"name: must be a plain folder name (no '/', not '..'), got {name!r}")

    def check_files(self) -> None:
        """Refuse a config whose files are missing, before anything is created.

        Checks ``data.datasets``, ``data.val_datasets`` (each must be a file) and
        ``loss.residual_file``.

        Raises:
            ValueError: ``data.datasets`` is empty.
            FileNotFoundError: one line naming the key, its index and the path, and where
                relative paths were looked up.
        """
        if not self.data.datasets:
            raise ValueError("data.datasets is empty: list the dataset files to train on")
        items = [(f"data.{k}[{i}]", p) for k in ("datasets", "val_datasets")
                 for i, p in enumerate(getattr(self.data, k))]
        if self.loss.residual_file:
            items.append(("loss.residual_file", self.loss.residual_file))
        for key, p in items:
            path = Path(p)
            if path.is_dir():
                raise FileNotFoundError(f"{key}: {p} is a folder, not a dataset file")
            if not path.is_file():
                where = "" if path.is_absolute() else (
                    f" (relative to the working directory {os.getcwd()}, then to the "
                    "config file's folder)")
                raise FileNotFoundError(f"{key}: {p} does not exist{where}")

    @classmethod
    def from_dict(cls, d: dict | None, base_dir: str | Path | None = None) -> TrainConfig:
        """Build from nested dicts; unknown keys raise ``ValueError`` naming the section.

        Relative dataset paths missing from the working directory are looked up in ``base_dir``
        (the YAML file's folder).

        Args:
            d: ``{section: {key: value}}`` plus the top-level keys (None: all defaults).
            base_dir: folder of the YAML file, or None.

        Returns:
            the config.

        Raises:
            ValueError: an unknown key (names its section), or an invalid ``data.split``,
                ``optim.schedule``, loss mode or model setting.
        """
        d = dict(d or {})
        sections = {"data": DataConfig, "optim": OptimConfig, "trainer": TrainerConfig,
                    "prior": PriorConfig, "thermal": ThermalConfig}
        kwargs = {}
        for key, value in d.items():
            if key in sections:
                kwargs[key] = _from_dict(sections[key], value, key)
            elif key == "model":
                kwargs[key] = ModelConfig.from_dict(value)
            elif key == "loss":
                kwargs[key] = LossConfig.from_dict(value)
            elif key in cls.__dataclass_fields__:
                kwargs[key] = value
            else:
                raise ValueError(f"unknown top-level config key {key!r}; known: "
                                 f"{sorted(cls.__dataclass_fields__)}")
        cfg = cls(**kwargs)
        if base_dir is not None:  # relative paths: the working directory first, then the YAML's
            for key in ("datasets", "val_datasets"):
                setattr(cfg.data, key, [
                    str(Path(base_dir) / p) if not Path(p).is_absolute() and not Path(p).exists()
                    and (Path(base_dir) / p).exists() else str(p) for p in getattr(cfg.data, key)])
            rf = cfg.loss.residual_file
            if rf and not Path(rf).is_absolute() and not Path(rf).exists() and (Path(base_dir) / rf).exists():
                cfg.loss.residual_file = str(Path(base_dir) / rf)
        if cfg.data.split not in ("frames", "protein"):
            raise ValueError(f"data.split must be 'frames' or 'protein', got {cfg.data.split!r}")
        if cfg.optim.schedule not in ("constant", "cosine", "exponential"):
            raise ValueError(f"optim.schedule must be constant/cosine/exponential, got "
                             f"{cfg.optim.schedule!r}")
        return cfg

    def to_dict(self) -> dict:
        """Nested plain dicts (the form :meth:`from_dict` reads and checkpoints store)."""
        return asdict(self)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config and apply ``key.sub=value`` overrides (values parsed as YAML).

    Args:
        path: YAML file (None: defaults).
        overrides: e.g. ``["loss.cov_weight=1", "trainer.max_steps=50"]``.

    Returns:
        :class:`TrainConfig`.

    Raises:
        ValueError: a malformed override or an unknown key.
        FileNotFoundError: ``path`` does not exist.
    """
    raw: dict = {}
    base = None
    if path is not None:
        raw = read_yaml_mapping(path)
        base = Path(path).parent
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key.sub=value")
        key, value = item.split("=", 1)
        node = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(value)
    return TrainConfig.from_dict(raw, base_dir=base)

