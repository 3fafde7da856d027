"""Automation: `nox -s tests` (full test suite, CPU), `nox -s lint`, `nox -s demo`, `nox -s verify`."""

import pathlib

import nox

nox.options.sessions = ["lint", "tests"]
CONSTRAINTS = ["-c", "constraints-cpu.txt"]
RUFF = "ruff==0.17.6"


def _install(session: nox.Session, extras: str) -> None:
    session.install(*CONSTRAINTS, "torch==2.13.0")
    session.install(*CONSTRAINTS, "-e", f".[{extras}]")


@nox.session
def tests(session: nox.Session) -> None:
    """Install hessid with every extra on CPU torch and run the whole test suite."""
    _install(session, "all")
    session.run("python", "-m", "pytest", *(session.posargs or ["tests"]))


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check over the packages, tests and scripts (ruff pinned: a new release may add or
    change rules, which would turn CI red without a code change)."""
    session.install(RUFF)
    paths = ["hessid", "verification", "training", "tests", "benchmarks", "examples", "noxfile.py"]
    session.run("ruff", "check", *[p for p in paths if pathlib.Path(p).exists()])


@nox.session
def verify(session: nox.Session) -> None:
    """Install the core + verification layer and run every built-in identity check."""
    _install(session, "verification")
    session.run("hessid", "verify", "--all", *session.posargs)


@nox.session
def demo(session: nox.Session) -> None:
    """The main job: `hessid verify --all`, then the chignolin demo (resumable; report path printed).

    Extra arguments go to `hessid demo`, e.g. `nox -s demo -- --scale ci` or `-- --pdb my.pdb`.
    """
    _install(session, "all")
    session.run("hessid", "verify", "--all")
    session.run("hessid", "demo", *session.posargs)
