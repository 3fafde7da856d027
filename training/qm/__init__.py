"""Atomistic QM data: conformers (RDKit ETKDG), optimisation, normal-mode sampling, GFN2-xTB
(tblite) energies/gradients with central-difference Hessians, PySCF DFT analytic Hessians, and
the resumable parallel builder of ``hessid qm build`` (docs/atomistic.md). The files it writes
are defined in :mod:`hessid.training.data.qm`."""
