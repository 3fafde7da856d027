"""Atomistic mode: a TensorNet energy model of molecules trained on QM energies, forces and
Hessians (E-F, E-F-HVP, E-F-H; Projected Hessian Learning). docs/atomistic_learning.md.

Modules, one job each: ``tensornet`` (plain-torch TensorNet forward), ``model`` (energy,
forces, HVPs, Hessians, checkpoints), ``probes``, ``losses``, ``frames`` (batches, splits,
target statistics), ``objective`` (the loss of a batch), ``frequencies`` (harmonic analysis),
``evaluation``, ``costs``, ``trainer``, ``check`` (the model-Hessian check of ``hessid verify``).
"""
