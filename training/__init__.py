"""hessid.training — AA data, Term-1 targets, CGSchNet models, losses, training, CG MD,
evaluation and reports. Depends on :mod:`hessid.verification` and the core.
"""
