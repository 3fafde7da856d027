"""Temperature-aware CG free energies ``A_θ(R, β)`` (docs/thermo.md §8, spec thermo.md §5).

Three forms over a CGSchNet representation (or, for low-dimensional toys, an MLP) plus the
fitted priors, in kcal/mol for bead positions R in Å, β = 1/(k_B T) in mol/kcal, T in K:

- **M1**  ``A = E_θ(R) − T S_θ(R) + b(β)``
- **M2**  ``A = E_θ(R) − T S_θ(R) + C_θ(R)[(T − T0) − T ln(T/T0)] + b(β)``
- **M0**  ``A = E_θ(R) + b0``: the T-unaware control (``temperature_aware`` False; L_U refused)
- **M3**  ``A = Σ_k g_k(τ) h_k(R) + b(β)`` (schnet backbone) or ``A = MLP(R, τ) + b(β)`` (mlp),
  τ = ln(T/T0): a generic smooth (C^∞, SiLU) function of T (T-NFF / Duschatko style).

The networks output dimensionless entropies and heat capacities in units of k_B
(``S_θ = k_B s_θ``, ``C_θ = k_B c_θ``), so ``T S_θ = s_θ/β``.

**Mean energy** ``u_θ = ∂_β(βA_θ) = A_θ + β ∂_βA_θ`` (R2) by autograd w.r.t. the β input
(:meth:`ThermalPotential.mean_energy`); closed forms ``u = E + b0`` (M1) and
``u = E + C(T − T0) + b0`` (M2) (:meth:`ThermalPotential.mean_energy_closed_form`), and the
conditional heat capacity ``C_R = −k_Bβ² ∂_β u`` (R3; M1: 0, M2: C_θ(R)).

**Baseline** ``b(β) = b0 + b1/β``: ``b0`` is learnable — it enters u as ``b0`` and absorbs the
arbitrary constant of the AA potential energy labels; ``b1`` is the gauge of spec §3 (A → A + c/β
changes no force, no u = ∂_β(βA), no Boltzmann distribution), so no loss can fix it: it is held
at 0 and not a parameter (test_thermal_models: ``test_losses_and_populations_are_invariant_to_c_over_beta``).

**Priors**: one T-independent prior (Boltzmann inversion at the mean training temperature,
as for single-T runs) inside ``E_θ``. Why: a prior fitted per temperature is a step function
of T with no β-derivative (no u_θ, no MD at an unseen T); harmonic bond/angle stiffnesses from
Boltzmann inversion, k = k_BT/σ²(T), are T-independent for a harmonic AA spring (energetic),
so putting them in E is right to first order; the networks' S/C channels carry the T-dependence
the prior misses (for the bead pairs inside the network cutoff).

:meth:`ThermalPotential.at_temperature` returns a fixed-β view with CGPotential's interface
(``forward``/``energy``/``forces``/``hessian_vector_product``) for MD at that T; checkpoints are
read back by :func:`hessid.training.learning.models.load_potential`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict
from pathlib import Path

import torch
from torchmdnet.models.model import create_model

from hessid import __version__ as HESSID_VERSION
from hessid.training.learning.checkpoint import checkpoint_prior, load_weights, save_checkpoint
from hessid.training.learning.configs import ModelConfig, ThermalConfig
from hessid.training.learning.layout import check_graph_batch
from hessid.training.learning.priors import PriorModel, PriorParameters, as_prior_model
from hessid.units import KB_KCAL_PER_MOL_K

__all__ = [
    "THERMAL_CHECKPOINT_FORMAT",
    "THERMAL_CHECKPOINT_FORMAT_VERSION",
    "FixedTemperaturePotential",
    "ThermalPotential",
    "temperature_of_beta",
]

THERMAL_CHECKPOINT_FORMAT = "hessid.thermal_potential"
THERMAL_CHECKPOINT_FORMAT_VERSION = 1
UNITS = {"length": "angstrom", "energy": "kcal/mol", "force": "kcal/mol/angstrom",
         "temperature": "kelvin", "beta": "mol/kcal"}


def temperature_of_beta(beta: torch.Tensor) -> torch.Tensor:
    """T = 1/(k_B β), K, for β in mol/kcal (same shape)."""
    return 1.0 / (KB_KCAL_PER_MOL_K * beta)


class _SchNetBackbone(torch.nn.Module):
    """CGSchNet representation (TorchMD-Net ``graph-network``) + a per-bead SiLU head with
    ``n_out`` channels summed per structure: (A, 3) Å → (B, n_out)."""

    def __init__(self, model_config: ModelConfig, n_types: int, n_out: int, hidden: int):
        super().__init__()
        self.rep = create_model(model_config.torchmdnet_args(n_types)).representation_model
        h = model_config.embedding_dimension
        self.head = torch.nn.Sequential(torch.nn.Linear(h, hidden), torch.nn.SiLU(),
                                        torch.nn.Linear(hidden, n_out)).to(model_config.dtype)
        self.max_num_neighbors = model_config.max_num_neighbors

    def forward(self, positions, bead_types, batch, n_graphs: int, extra=None):
        counts = torch.bincount(batch, minlength=n_graphs)
        if int(counts.max()) > self.max_num_neighbors:
            raise ValueError(f"a structure has {int(counts.max())} beads > max_num_neighbors="
                             f"{self.max_num_neighbors}; raise it so no pair is dropped")
        x = self.rep(bead_types.long(), positions, batch)[0]  # (A, H)
        per_bead = self.head(x)  # (A, n_out)
        out = torch.zeros(n_graphs, per_bead.shape[1], dtype=per_bead.dtype, device=per_bead.device)
        return out.index_add(0, batch, per_bead)  # (B, n_out)


class _MLPBackbone(torch.nn.Module):
    """MLP on the first ``dims`` coordinates of each of ``n_beads`` beads (plus optional extra
    per-structure inputs, e.g. τ): (A, 3) Å → (B, n_out). For fixed-size low-D toys only (not
    translation- or rotation-invariant)."""

    def __init__(self, n_beads: int, dims: int, n_extra: int, hidden: int, layers: int, n_out: int,
                 dtype: torch.dtype):
        super().__init__()
        self.n_beads, self.dims = int(n_beads), int(dims)
        sizes = [self.n_beads * self.dims + n_extra] + [hidden] * layers
        mods: list[torch.nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:], strict=True):
            mods += [torch.nn.Linear(a, b), torch.nn.SiLU()]
        mods.append(torch.nn.Linear(sizes[-1], n_out))
        self.mlp = torch.nn.Sequential(*mods).to(dtype)

    def forward(self, positions, bead_types, batch, n_graphs: int, extra=None):
        if positions.shape[0] != n_graphs * self.n_beads:
            raise ValueError(f"the mlp backbone takes {self.n_beads} beads per structure, got "
                             f"{positions.shape[0]} beads in {n_graphs} structures")
        feats = positions.reshape(n_graphs, self.n_beads, 3)[..., : self.dims].reshape(n_graphs, -1)
        if extra is not None:
            feats = torch.cat([feats, extra.reshape(n_graphs, -1)], dim=1)
        return self.mlp(feats)  # (B, n_out)


class ThermalPotential(torch.nn.Module):
    """Temperature-aware CG free energy ``A_θ(R, β)`` (kcal/mol), forms M1/M2/M3 (module doc).

    Args:
        bead_vocabulary: residue-type names; ``bead_types`` index into it.
        prior: fitted :class:`~hessid.training.learning.priors.PriorModel` (T-independent, part
            of E_θ) or None.
        config: :class:`ModelConfig` (CGSchNet and dtype) or dict.
        thermal: :class:`ThermalConfig` (form, backbone, T0, sizes) or dict.
        n_beads: beads per structure (needed by the mlp backbone only).

    Raises:
        ValueError: empty vocabulary, invalid config, or the mlp backbone without ``n_beads``.
    """

    def __init__(self, bead_vocabulary: list[str], prior: PriorModel | PriorParameters | None = None,
                 config: ModelConfig | dict | None = None, thermal: ThermalConfig | dict | None = None,
                 n_beads: int | None = None):
        super().__init__()
        if not bead_vocabulary:
            raise ValueError("bead_vocabulary must hold at least one residue type")
        self.config = config if isinstance(config, ModelConfig) else ModelConfig.from_dict(config)
        self.thermal = thermal if isinstance(thermal, ThermalConfig) else ThermalConfig(**(thermal or {}))
        self.bead_vocabulary = list(bead_vocabulary)
        self.n_beads = None if n_beads is None else int(n_beads)
        tc, dtype = self.thermal, self.config.dtype
        self.form = tc.form
        #: the contract attribute: True for M1–M3 (β enters A), False for the control M0
        self.temperature_aware = tc.form != "M0"
        self.reference_temperature = float(tc.reference_temperature)
        generic_mlp = tc.form == "M3" and tc.backbone == "mlp"
        n_out = {"M0": 1, "M1": 2, "M2": 3, "M3": 1 if generic_mlp else tc.rank}[tc.form]
        if tc.backbone == "mlp":
            if self.n_beads is None:
                raise ValueError("the mlp backbone needs n_beads (beads per structure)")
            self.net = _MLPBackbone(self.n_beads, tc.mlp_dims, 1 if generic_mlp else 0, tc.hidden,
                                    tc.mlp_layers, n_out, dtype)
        else:
            self.net = _SchNetBackbone(self.config, len(self.bead_vocabulary), n_out, tc.hidden)
        # M3 (schnet): g(τ) = MLP(τ) → rank coefficients of the channels h_k(R)
        self.coupling = (torch.nn.Sequential(torch.nn.Linear(1, tc.hidden), torch.nn.SiLU(),
                                             torch.nn.Linear(tc.hidden, tc.rank)).to(dtype)
                         if tc.form == "M3" and not generic_mlp else None)
        self.baseline = torch.nn.Parameter(torch.zeros((), dtype=dtype))  # b0, kcal/mol
        self.prior = as_prior_model(prior, dtype)
        self.metadata: dict = {}

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the weights and prior (``config.precision``)."""
        return self.config.dtype

    # ------------------------------------------------------------------ the free energy

    def _check(self, positions, bead_types, batch, beta):
        batch = check_graph_batch(positions, bead_types, batch, len(self.bead_vocabulary))
        n_graphs = int(batch.max()) + 1 if batch.numel() else 0
        beta = torch.as_tensor(beta, dtype=positions.dtype, device=positions.device)
        if beta.ndim == 0:
            beta = beta.expand(n_graphs)
        if beta.shape != (n_graphs,):
            raise ValueError(f"beta must be a scalar or (B,) = ({n_graphs},) mol/kcal, got {tuple(beta.shape)}")
        if not bool(torch.all(beta > 0)) or not bool(torch.all(torch.isfinite(beta))):
            raise ValueError("beta must be positive and finite (mol/kcal = 1/(k_B T))")
        return batch, beta, n_graphs

    def _prior_energy(self, positions, bead_types, batch, n_graphs):
        if self.prior is None:
            return torch.zeros(n_graphs, dtype=positions.dtype, device=positions.device)
        return self.prior(positions, batch, bead_types)

    def components(self, positions, bead_types, batch=None, beta=None) -> dict:
        """The channels of the form at β (dict of (B,) tensors).

        M0/M1/M2: ``energy`` E_θ (kcal/mol, prior and b0 excluded), ``entropy`` s_θ (units of
        k_B; 0 for M0),
        M2 also ``heat_capacity`` c_θ (units of k_B); M3: ``free_energy`` (network part, needs β).
        ``prior`` (kcal/mol) in every form.
        """
        batch, beta_t, n_graphs = self._check(positions, bead_types, batch,
                                              1.0 if beta is None else beta)
        out = {"prior": self._prior_energy(positions, bead_types, batch, n_graphs)}
        if self.form == "M3":
            if beta is None:
                raise ValueError("M3 has no β-free channels: pass beta")
            tau = torch.log(temperature_of_beta(beta_t) / self.reference_temperature)[:, None]  # (B, 1)
            if self.coupling is None:
                out["free_energy"] = self.net(positions, bead_types, batch, n_graphs, extra=tau)[:, 0]
            else:
                h = self.net(positions, bead_types, batch, n_graphs)  # (B, K)
                out["free_energy"] = (self.coupling(tau) * h).sum(-1)
            return out
        ch = self.net(positions, bead_types, batch, n_graphs)  # (B, 1, 2 or 3)
        out["energy"] = ch[:, 0]
        out["entropy"] = ch[:, 1] if self.form != "M0" else torch.zeros_like(ch[:, 0])
        if self.form == "M2":
            out["heat_capacity"] = ch[:, 2]
        return out

    def free_energy(self, positions: torch.Tensor, bead_types: torch.Tensor, batch: torch.Tensor | None,
                    beta) -> torch.Tensor:
        """``A_θ(R, β)`` of each structure (module doc for the forms).

        Args:
            positions: bead positions (A, 3), Å, of B structures flattened graph-style.
            bead_types: (A,) int64 type indices.  batch: (A,) int64 structure index (None: one).
            beta: 1/(k_B T), mol/kcal: scalar or (B,) (differentiable: u_θ takes ∂_β).

        Returns:
            (B,) kcal/mol, prior and baseline b0 included.

        Raises:
            ValueError: shapes disagree, a type outside the vocabulary, β not positive.
        """
        batch, beta_t, _ = self._check(positions, bead_types, batch, beta)
        c = self.components(positions, bead_types, batch, beta_t)
        if self.form == "M3":
            return c["prior"] + c["free_energy"] + self.baseline
        a = c["prior"] + c["energy"] - c["entropy"] / beta_t + self.baseline  # T S = k_B T s = s/β
        if self.form == "M2":
            t = temperature_of_beta(beta_t)
            t0 = self.reference_temperature
            a = a + KB_KCAL_PER_MOL_K * c["heat_capacity"] * ((t - t0) - t * torch.log(t / t0))
        return a

    def _beta_or_refuse(self, beta):
        if beta is not None:
            return beta
        if not self.temperature_aware:
            return 1.0  # M0: A does not depend on β, any value gives the same numbers
        raise ValueError("a temperature-aware model needs beta (or use at_temperature(T))")

    def energy(self, positions, bead_types, batch=None, beta=None) -> torch.Tensor:
        """Alias of :meth:`free_energy`, (B,) kcal/mol (β required unless the form is M0, so
        the control also has CGPotential's call signature)."""
        return self.free_energy(positions, bead_types, batch, self._beta_or_refuse(beta))

    def forward(self, positions, bead_types, batch=None, beta=None) -> torch.Tensor:
        """:meth:`free_energy` (β required unless M0), (B,) kcal/mol."""
        return self.energy(positions, bead_types, batch, beta)

    def evaluate(self, positions: torch.Tensor, bead_types: torch.Tensor, batch: torch.Tensor | None, beta,
                 forces: bool = True, mean_energy: bool = False, create_graph: bool = False) -> dict:
        """A_θ, forces ``−∇_R A_θ`` and ``u_θ = A_θ + β ∂_βA_θ`` from one forward pass.

        Args:
            positions (A, 3) Å, bead_types (A,), batch (A,) or None, beta scalar or (B,) mol/kcal.
            forces, mean_energy: which derivatives to take.
            create_graph: keep the graph of the derivatives (training: losses on them).

        Returns:
            dict with ``free_energy`` (B,) kcal/mol, ``forces`` (A, 3) kcal/mol/Å,
            ``mean_energy`` (B,) kcal/mol (R2: ∂_β(βA) by autograd w.r.t. the β input).
        """
        batch, beta_t, _ = self._check(positions, bead_types, batch, beta)
        x = positions if positions.requires_grad else positions.detach().requires_grad_(True)
        # a β that already carries a graph (heat_capacity differentiates u again) is kept
        b = beta_t if beta_t.requires_grad else beta_t.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            a = self.free_energy(x, bead_types, batch, b)
            wrt = ([x] if forces else []) + ([b] if mean_energy else [])
            grads = torch.autograd.grad(a.sum(), wrt, create_graph=create_graph, allow_unused=True) if wrt else ()
        grads = [torch.zeros_like(w) if g is None else g for g, w in zip(grads, wrt, strict=True)]  # M0: no β
        out = {"free_energy": a}
        if forces:
            out["forces"] = -grads[0]
        if mean_energy:
            out["mean_energy"] = a + b * grads[-1]  # each A_b depends on its own β_b only
        return out

    def forces(self, positions, bead_types, batch=None, beta=None, create_graph: bool = False) -> torch.Tensor:
        """``F_θ = −∇_R A_θ(R, β)``, (A, 3) kcal/mol/Å, by autograd (β required unless M0)."""
        return self.evaluate(positions, bead_types, batch, self._beta_or_refuse(beta),
                             create_graph=create_graph)["forces"]

    def mean_energy(self, positions, bead_types, batch, beta, create_graph: bool = False) -> torch.Tensor:
        """``u_θ(R, β) = ∂_β(βA_θ)`` by autograd (R2), (B,) kcal/mol."""
        return self.evaluate(positions, bead_types, batch, beta, forces=False, mean_energy=True,
                             create_graph=create_graph)["mean_energy"]

    def mean_energy_closed_form(self, positions, bead_types, batch, beta) -> torch.Tensor:
        """u_θ in closed form: M0, M1 ``E + prior + b0``; M2 ``E + prior + k_B c (T − T0) + b0``;
        (B,) kcal/mol.

        Raises:
            ValueError: M3 (no closed form).
        """
        if self.form == "M3":
            raise ValueError("M3 has no closed-form mean energy: use mean_energy (autograd)")
        batch, beta_t, _ = self._check(positions, bead_types, batch, beta)
        c = self.components(positions, bead_types, batch, beta_t)
        u = c["prior"] + c["energy"] + self.baseline
        if self.form == "M2":
            u = u + KB_KCAL_PER_MOL_K * c["heat_capacity"] * (temperature_of_beta(beta_t) - self.reference_temperature)
        return u

    def heat_capacity(self, positions, bead_types, batch, beta) -> torch.Tensor:
        """Conditional heat capacity ``C_R = k_Bβ² Var_R(U) = −k_Bβ² ∂_β u_θ`` (R3) by double
        autograd, (B,) kcal/mol/K (M1: 0; M2: k_B c_θ(R))."""
        batch, beta_t, _ = self._check(positions, bead_types, batch, beta)
        b = beta_t.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            u = self.evaluate(positions.detach(), bead_types, batch, b, forces=False, mean_energy=True,
                              create_graph=True)["mean_energy"]
            (du,) = torch.autograd.grad(u.sum(), b, allow_unused=True)
        du = torch.zeros_like(b) if du is None else du
        return -KB_KCAL_PER_MOL_K * b.detach() ** 2 * du

    def entropy(self, positions, bead_types, batch, beta) -> torch.Tensor:
        """``S_θ = −∂_T A_θ = k_Bβ² ∂_β A_θ`` by autograd, (B,) kcal/mol/K (M1: k_B s_θ;
        M2: k_B s_θ + k_B c_θ ln(T/T0))."""
        batch, beta_t, _ = self._check(positions, bead_types, batch, beta)
        b = beta_t.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            a = self.free_energy(positions.detach(), bead_types, batch, b)
            (da,) = torch.autograd.grad(a.sum(), b, allow_unused=True)
        da = torch.zeros_like(b) if da is None else da
        return KB_KCAL_PER_MOL_K * b.detach() ** 2 * da

    def at_temperature(self, temperature: float) -> FixedTemperaturePotential:
        """A fixed-β view ``A_θ(·, 1/(k_B T))`` with CGPotential's interface (MD at T).

        Args:
            temperature: K, > 0.

        Raises:
            ValueError: T not positive and finite.
        """
        return FixedTemperaturePotential(self, temperature)

    # ------------------------------------------------------------------ checkpoint

    def checkpoint_dict(self, extra: dict | None = None) -> dict:
        """Everything :func:`hessid.training.learning.models.load_potential` needs."""
        return {
            "format": THERMAL_CHECKPOINT_FORMAT,
            "format_version": THERMAL_CHECKPOINT_FORMAT_VERSION,
            "hessid_version": HESSID_VERSION,
            "config": asdict(self.config),
            "thermal": asdict(self.thermal),
            "n_beads": self.n_beads,
            "bead_vocabulary": list(self.bead_vocabulary),
            "units": dict(UNITS),
            "prior": None if self.prior is None else self.prior.params.to_dict(),
            "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()
                           if not k.startswith("prior.")},
            "metadata": dict(self.metadata, **(extra or {})),
        }

    def save(self, path: str | Path, extra: dict | None = None) -> Path:
        """Write one checkpoint file (weights, prior, vocabulary, units, configs, version)."""
        return save_checkpoint(self.checkpoint_dict(extra), path)

    @classmethod
    def from_checkpoint_dict(cls, ckpt: dict, source: str = "<dict>") -> ThermalPotential:
        """Rebuild from :meth:`checkpoint_dict` output.

        Raises:
            ValueError: not a thermal checkpoint, a newer format, other units, or weights that do
                not match the configs.
        """
        if not isinstance(ckpt, dict) or ckpt.get("format") != THERMAL_CHECKPOINT_FORMAT:
            raise ValueError(f"{source} is not a hessid thermal potential checkpoint")
        fv = int(ckpt.get("format_version", 0))
        written_by = ckpt.get("hessid_version", "unknown")
        if fv > THERMAL_CHECKPOINT_FORMAT_VERSION or fv < 1:
            raise ValueError(f"{source} was written by hessid {written_by} with thermal checkpoint format "
                             f"{fv}; this hessid {HESSID_VERSION} reads format 1..{THERMAL_CHECKPOINT_FORMAT_VERSION}")
        if written_by != HESSID_VERSION:
            warnings.warn(f"{source} was written by hessid {written_by}, loading with {HESSID_VERSION}",
                          stacklevel=3)
        prior = checkpoint_prior(ckpt, UNITS, source)
        model = cls(ckpt["bead_vocabulary"], prior, ModelConfig.from_dict(ckpt["config"]),
                    ThermalConfig(**ckpt["thermal"]), ckpt.get("n_beads"))
        load_weights(model, ckpt["state_dict"], source, ignore_missing="prior.")
        model.metadata = dict(ckpt.get("metadata") or {})
        return model


class FixedTemperaturePotential(torch.nn.Module):
    """``A_θ(·, β)`` of a :class:`ThermalPotential` at one temperature, with CGPotential's
    interface (``forward``/``energy``/``forces``/``hessian_vector_product``); shares the
    parent's parameters. ``temperature`` (K) and ``beta`` (mol/kcal) name its state point.

    Raises:
        ValueError: temperature not positive and finite.
    """

    temperature_aware = False  # a fixed-β view: a plain potential at its temperature

    def __init__(self, parent: ThermalPotential, temperature: float):
        super().__init__()
        t = float(temperature)
        if not (t > 0 and math.isfinite(t)):
            raise ValueError(f"temperature must be positive and finite (K), got {temperature!r}")
        self.parent = parent
        self.temperature = t
        self.beta = 1.0 / (KB_KCAL_PER_MOL_K * t)
        self.bead_vocabulary = parent.bead_vocabulary
        self.config = parent.config
        self.metadata = dict(parent.metadata, temperature=t)

    @property
    def dtype(self) -> torch.dtype:
        """The parent's dtype."""
        return self.parent.dtype

    def forward(self, positions, bead_types, batch=None) -> torch.Tensor:
        """``A_θ(R, β)``, (B,) kcal/mol (positions (A, 3) Å, bead_types/batch (A,))."""
        return self.parent.free_energy(positions, bead_types, batch, self.beta)

    def energy(self, positions, bead_types, batch=None) -> torch.Tensor:
        """Alias of :meth:`forward`, (B,) kcal/mol."""
        return self.forward(positions, bead_types, batch)

    def forces(self, positions, bead_types, batch=None, create_graph: bool = False) -> torch.Tensor:
        """``−∇_R A_θ(R, β)``, (A, 3) kcal/mol/Å, by autograd."""
        return self.parent.evaluate(positions, bead_types, batch, self.beta, create_graph=create_graph)["forces"]

    def hessian_vector_product(self, positions, bead_types, batch, probes, create_graph: bool = False):
        """Exact ``H v`` of A_θ(·, β) by double backward for each probe.

        Args:
            positions (A, 3) Å; bead_types, batch (A,) int64; probes (k, A, 3).

        Returns:
            (k, A, 3) kcal/mol/Å².
        """
        x = positions.detach().requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(self.forward(x, bead_types, batch).sum(), x, create_graph=True)
            out = [torch.autograd.grad((g * v).sum(), x, retain_graph=True, create_graph=create_graph)[0]
                   for v in probes]
        return torch.stack(out)  # (k, A, 3)
