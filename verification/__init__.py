"""hessid.verification — exact checks of the CG identities (``hessid verify``).

Depends on the core (:mod:`hessid`) only; never on :mod:`hessid.training`.
"""
