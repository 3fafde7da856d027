"""Reporters for CG Langevin runs: a :class:`Reporter` protocol, DCD trajectories, a CSV log.

As in OpenMM, reporters observe states and write files; the run loop
(:func:`hessid.training.md.simulation.run`) calls ``report`` after every ``interval``-th step,
``flush`` at each checkpoint (the dict it returns is stored in the checkpoint) and, on resume,
``restore`` with that dict, so files end where the checkpoint does.

Files: ``replica_XXX.dcd`` (CHARMM DCD, float32 Å, no unit cell; mdtraj loads them in nm),
``topology.pdb`` (Cα chain), ``state.csv`` (energy, kinetic temperature, status per replica).
"""

from __future__ import annotations

import csv
import os
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import mdtraj as md
import numpy as np

from hessid.training.md.integrator import STATUS_NAMES, LangevinBAOAB, LangevinState

__all__ = ["DCDFile", "DCDReporter", "Reporter", "StateDataReporter", "ca_topology"]


@runtime_checkable
class Reporter(Protocol):
    """What the run loop needs from a reporter (OpenMM's reporter idea, checkpoint-aware).

    Attributes:
        interval: report stride in steps; ``report`` is called after steps ``k · interval``
            (k ≥ 1; step 0 is not reported, as in OpenMM).
    """

    interval: int

    def report(self, state: LangevinState, integrator: LangevinBAOAB) -> None:
        """Observe ``state`` (positions (R, n, 3) Å, …) after a step that is a multiple of ``interval``."""

    def flush(self) -> dict:
        """Write what is buffered; return JSON-able bookkeeping stored in the checkpoint."""

    def restore(self, saved: dict) -> None:
        """Undo output written after the checkpoint whose :meth:`flush` returned ``saved``."""


def ca_topology(n_beads: int, residue_names: Sequence[str] | None = None):
    """mdtraj Topology of one chain of Cα atoms with consecutive bonds.

    Args:
        n_beads: number of beads n.
        residue_names: n three-letter names; "ALA" where None or unrecognised.

    Returns:
        ``mdtraj.Topology`` with n residues of one "CA" carbon atom each and n − 1 bonds.

    Raises:
        ValueError: residue_names has the wrong length.
    """
    if residue_names is not None and len(residue_names) != n_beads:
        raise ValueError(f"{len(residue_names)} residue names for {n_beads} beads")
    top = md.Topology()
    chain = top.add_chain()
    atoms = []
    for i in range(n_beads):
        name = residue_names[i] if residue_names is not None else "ALA"
        name = name.upper() if isinstance(name, str) and len(name) == 3 else "ALA"
        res = top.add_residue(name, chain, resSeq=i + 1)
        atoms.append(top.add_atom("CA", md.element.carbon, res))
    for a, b in zip(atoms[:-1], atoms[1:], strict=True):
        top.add_bond(a, b)
    return top


# Own writer, not mdtraj's or OpenMM's: mdtraj's DCDTrajectoryFile has no append mode ('r'/'w'
# only), OpenMM's DCDFile appends but cannot truncate, and both stamp the creation time into the
# header, so a resumed run could not be byte-identical to an uninterrupted one.
class DCDFile:
    """Minimal CHARMM DCD writer (float32 Å, no unit cell) with O(1) append and truncate.

    mdtraj reads it (``mdtraj.load(path, top=pdb)``, coordinates converted to nm). The header
    holds no timestamp, so equal frames give equal bytes (checkpoint/resume relies on it).

    Args:
        path: file path; created with a header when it does not exist.
        n_atoms: atoms per frame.
        timestep_ps: time between saved frames, ps (stored in the header as DELTA in AKMA time
            units, 1 AKMA = 0.04888821 ps).
        title: up to 80 ASCII characters of provenance.
    """

    _HEADER = 4 + 84 + 4 + 4 + 4 + 80 + 4 + 4 + 4 + 4  # bytes before the first frame

    def __init__(self, path: str | os.PathLike, n_atoms: int, timestep_ps: float = 1.0,
                 title: str = "hessid"):
        self.path = Path(path)
        self.n_atoms = int(n_atoms)
        self.frame_bytes = 3 * (8 + 4 * self.n_atoms)
        if not self.path.exists():
            with open(self.path, "wb") as f:
                f.write(self._header(0, timestep_ps, title))

    def _header(self, n_frames: int, timestep_ps: float, title: str) -> bytes:
        icntrl = [0] * 20
        icntrl[0], icntrl[1], icntrl[2], icntrl[3] = n_frames, 1, 1, n_frames
        icntrl[19] = 24  # CHARMM version
        delta_akma = float(timestep_ps) / 0.04888821  # DCD stores DELTA in AKMA time units
        head = struct.pack("<i4s9if10i", 84, b"CORD", *icntrl[:9], delta_akma, *icntrl[10:])
        head += struct.pack("<i", 84)
        t = title.encode("ascii", "replace")[:80].ljust(80)
        head += struct.pack("<ii", 84, 1) + t + struct.pack("<i", 84)
        head += struct.pack("<iii", 4, self.n_atoms, 4)
        assert len(head) == self._HEADER
        return head

    @property
    def n_frames(self) -> int:
        """Frames in the file now (from its size)."""
        return (self.path.stat().st_size - self._HEADER) // self.frame_bytes

    def append(self, xyz: np.ndarray) -> None:
        """Append frames ``xyz`` (F, n_atoms, 3) Å."""
        xyz = np.asarray(xyz, dtype="<f4").reshape(-1, self.n_atoms, 3)  # (F, n, 3)
        if not len(xyz):
            return
        marker = struct.pack("<i", 4 * self.n_atoms)
        with open(self.path, "r+b") as f:
            f.seek(0, os.SEEK_END)
            for frame in xyz:
                for k in range(3):
                    f.write(marker + np.ascontiguousarray(frame[:, k]).tobytes() + marker)
            self._set_count(f, self.n_frames_from_size(f.tell()))

    def n_frames_from_size(self, size: int) -> int:
        """Frames held by a file of ``size`` bytes."""
        return (size - self._HEADER) // self.frame_bytes

    def _set_count(self, f, n: int) -> None:
        f.seek(8)
        f.write(struct.pack("<i", n))
        f.seek(20)
        f.write(struct.pack("<i", n))
        f.flush()
        os.fsync(f.fileno())

    def truncate(self, n_frames: int) -> None:
        """Keep the first ``n_frames`` frames (resume after a checkpoint).

        Raises:
            ValueError: the file holds fewer frames than ``n_frames``.
        """
        have = self.n_frames
        if have < n_frames:
            raise ValueError(f"{self.path} holds {have} frames, checkpoint expects {n_frames}")
        with open(self.path, "r+b") as f:
            f.truncate(self._HEADER + n_frames * self.frame_bytes)
            self._set_count(f, n_frames)


class DCDReporter:
    """Writes every ``interval``-th state of each running replica to ``replica_XXX.dcd``.

    Frames are buffered and appended at :meth:`flush` (called at checkpoints and the end),
    so files and checkpoint agree; :meth:`restore` truncates files to a checkpoint. A stopped
    replica's file ends at its last valid saved frame. ``topology.pdb`` (Cα) sits beside them.

    Args:
        directory: output folder.
        interval: save stride in steps.
        n_replicas, n_beads: system size.
        timestep_ps: time between saved frames, ps (for the DCD header).
        topology: mdtraj Topology (Cα), written to ``topology.pdb``; generic chain if None.
    """

    def __init__(self, directory, interval: int, n_replicas: int, n_beads: int,
                 timestep_ps: float, topology=None):
        self.directory = Path(directory)
        self.interval = int(interval)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.topology = topology if topology is not None else ca_topology(n_beads)
        self.files = [DCDFile(self.directory / f"replica_{r:03d}.dcd", n_beads, timestep_ps,
                              title=f"hessid CG replica {r} | coordinates in angstrom")
                      for r in range(n_replicas)]
        self._buffer: list[tuple[np.ndarray, np.ndarray]] = []
        self.frames_written = [f.n_frames for f in self.files]
        self._write_topology(n_beads)

    def _write_topology(self, n_beads: int) -> None:
        path = self.directory / "topology.pdb"
        if not path.exists():
            xyz = 0.38 * np.arange(n_beads)[:, None] * np.array([[1.0, 0.0, 0.0]])  # (n, 3) nm
            md.Trajectory(xyz[None], self.topology).save_pdb(str(path))

    def report(self, state: LangevinState, integrator: LangevinBAOAB) -> None:
        """Buffer the positions (R, n, 3) Å of every replica at this step."""
        self._buffer.append((state.positions.detach().cpu().numpy().copy(),
                             state.active.cpu().numpy().copy()))

    def flush(self) -> dict:
        if self._buffer:
            pos = np.stack([p for p, _ in self._buffer])  # (F, R, n, 3) Å
            active = np.stack([a for _, a in self._buffer])  # (F, R)
            for r, f in enumerate(self.files):
                frames = pos[active[:, r], r]  # (F_r, n, 3)
                f.append(frames)
                self.frames_written[r] += len(frames)
        self._buffer.clear()
        return {"frames_written": list(self.frames_written)}

    def restore(self, saved: dict) -> None:
        """Truncate every replica's file to the frame count saved in a checkpoint."""
        for f, n in zip(self.files, saved["frames_written"], strict=True):
            f.truncate(n)
        self.frames_written = list(saved["frames_written"])

    def close(self) -> None:
        self.flush()


class StateDataReporter:
    """CSV log per replica: step, time (ps), potential energy (kcal/mol), kinetic T (K), status.

    Args:
        path: CSV file.
        interval: report stride in steps.
    """

    FIELDS = ["step", "time_ps", "replica", "potential_energy_kcal_mol", "kinetic_temperature_K", "status"]

    def __init__(self, path, interval: int):
        self.path = Path(path)
        self.interval = int(interval)
        self._rows: list[list] = []
        self._last_step = 0
        if not self.path.exists():
            with open(self.path, "w", newline="") as f:
                csv.writer(f).writerow(self.FIELDS)

    def report(self, state: LangevinState, integrator: LangevinBAOAB) -> None:
        """Buffer one CSV row per replica: step, time (ps), replica, energy (kcal/mol), T_kin (K), status."""
        temp = integrator.kinetic_temperature(state).cpu().tolist()
        energy = state.potential_energy.cpu().tolist()
        status = state.status.cpu().tolist()
        t = state.step * integrator.timestep_ps
        self._last_step = state.step
        for r in range(state.n_replicas):
            self._rows.append([state.step, f"{t:.6g}", r, f"{energy[r]:.8g}", f"{temp[r]:.6g}",
                               STATUS_NAMES[status[r]] if status[r] else "running"])

    def flush(self) -> dict:
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerows(self._rows)
        self._rows.clear()
        return {"last_step": self._last_step}

    def restore(self, saved: dict) -> None:
        """Drop rows written after the checkpoint (``saved["last_step"]``)."""
        step = saved.get("last_step", 0)
        self._last_step = step
        with open(self.path, newline="") as f:
            rows = list(csv.reader(f))
        keep = [rows[0]] + [r for r in rows[1:] if int(r[0]) <= step]
        with open(self.path, "w", newline="") as f:
            csv.writer(f).writerows(keep)

    def close(self) -> None:
        self.flush()
