"""hessid.training — AA data, Term-1 targets, CGSchNet models, losses, training, CG MD,
evaluation and reports; atomistic QM data and TensorNet potentials. Depends on
:mod:`hessid.verification` and the core.

warp-lang (pulled in by torchmd-net) prints an initialisation banner on stdout when torchmd-net
is imported; its log level is raised to warnings here, before any training module imports
torchmd-net, so that stdout carries hessid's results only.
"""

try:  # optional: warp-lang comes with torchmd-net's TensorNet kernels; absent is fine
    import warp
except ImportError:  # pragma: no cover - depends on the installed extras
    warp = None
else:
    warp.config.log_level = warp.LOG_WARNING
