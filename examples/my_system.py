"""A user's CG map, written out for ``hessid verify examples/my_system.py``.

A heteronuclear dimer in a 2-D anisotropic trap (D = 4: atoms 1 and 2, x and y each),
coarse-grained to its centre of mass (d = 2). The question a user asks: "does the identity
hold for my map, and is my force projector right?" Here the projector is the bead-sum one,
P = [[1, 0, 1, 0], [0, 1, 0, 1]]: the CG force is the sum of the two atomic forces, which
satisfies P Mᵀ = I for a centre-of-mass map (docs/identities.md, eq. (2.1)).

The fiber of R (all dimers with centre of mass R) is parametrised by the bond length b and
angle θ:  r1 = R − (m2/m) b u(θ),  r2 = R + (m1/m) b u(θ),  u = (cos θ, sin θ).
Units: Å, kcal/mol, β in mol/kcal (300 K).
"""

import math

import torch

name = "dimer COM map (bead-sum projector)"
beta = 1.0 / (0.0019872041 * 300.0)  # mol/kcal

m1, m2 = 12.011, 15.999  # g/mol (C, O)
m = m1 + m2


def trap(x, y):
    """Anisotropic, anharmonic external potential on one atom, kcal/mol."""
    return 0.5 * x**2 + 0.8 * y**2 + 0.05 * x**4 + 0.1 * x * y


def potential(r):
    """H(r): (..., 4) Å → (...) kcal/mol; bond (k = 20 kcal/mol/Å², b₀ = 1.5 Å) + traps."""
    x1, y1, x2, y2 = r[..., 0], r[..., 1], r[..., 2], r[..., 3]
    b = torch.sqrt((x2 - x1) ** 2 + (y2 - y1) ** 2)
    return 20.0 * (b - 1.5) ** 2 + trap(x1, y1) + 1.3 * trap(x2, y2)


def cg_map(r):
    """Centre of mass: (..., 4) → (..., 2) Å."""
    return (m1 * r[..., 0:2] + m2 * r[..., 2:4]) / m


def fiber(R, s):
    """(R (..., 2), s = (b, θ) (..., 2)) → r (..., 4) on the level set cg_map(r) = R."""
    b, th = s[..., 0:1], s[..., 1:2]
    u = torch.cat([torch.cos(th), torch.sin(th)], dim=-1)
    return torch.cat([R - (m2 / m) * b * u, R + (m1 / m) * b * u], dim=-1)


# the bond stays within (0, 3) Å: exp(−β·20·1.5²) ≈ 1e-33 at both ends
fiber_bounds = [(0.0, 3.0), (0.0, 2 * math.pi, "periodic")]
n_nodes = 48
points = [[0.3, -0.2], [-0.5, 0.4]]

projector = [[1.0, 0.0, 1.0, 0.0],
             [0.0, 1.0, 0.0, 1.0]]
