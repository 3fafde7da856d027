"""Building blocks of every ``hessid`` command: parsers from config dataclasses, the shared
flags, the saved config and the exit-code contract.

A command module (one per command, listed in :data:`hessid.cli.COMMANDS`) defines

* ``build_parser(prog: str) -> jsonargparse.ArgumentParser`` — made with :func:`new_parser`,
  its options added from a config dataclass with :func:`add_dataclass` (so each default is
  written once, in the dataclass), plus :func:`add_run_flags` where the command has them;
* ``run(cfg: jsonargparse.Namespace, parser) -> int`` — builds the stage's config from ``cfg``
  (:func:`dataclass_from`), calls one public function, saves the resolved options next to
  its outputs (:func:`save_config`) and returns an exit code.

:func:`run_command` parses, sets up logging, runs, and maps exceptions to the exit codes of
:data:`EXIT_CODES`. Flags use dashes (``--hydrogen-mass``); config-file keys are the
dataclass field names (``hydrogen_mass``), so a stage's YAML config and the CLI agree.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import logging
import os
import re
import sys
import traceback
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import jsonargparse
import yaml
from jsonargparse import ActionConfigFile, ActionYesNo, ArgumentParser, Namespace

__all__ = [
    "EXIT_CODES",
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "EXTRA_OF_MODULE",
    "JobFailed",
    "add_dataclass",
    "add_run_flags",
    "add_set_flag",
    "attribute_docs",
    "configure_logging",
    "dataclass_from",
    "missing_extra_message",
    "one_line",
    "read_yaml_mapping",
    "new_parser",
    "run_command",
    "save_config",
    "signature_default",
]

EXIT_OK = 0
#: a check or job ran and failed (a FAIL row, a refused verification gate, an I/O failure)
EXIT_FAILED = 1
#: bad input or usage (unknown flag, invalid value, missing file, missing optional extra)
EXIT_USAGE = 2
EXIT_CODES: dict[int, str] = {
    EXIT_OK: "success",
    EXIT_FAILED: "a check or job failed",
    EXIT_USAGE: "bad input or usage (including a missing optional extra)",
}

#: top-level module name → the hessid extra that installs it
EXTRA_OF_MODULE: dict[str, str] = {
    **dict.fromkeys(("openmm", "pdbfixer", "PeptideBuilder", "torchmdnet", "mdtraj", "deeptime",
                     "ot", "h5py", "lightning", "pytorch_lightning", "lightning_fabric",
                     "matplotlib", "tqdm", "pymbar"), "training"),
    "sympy": "verification",
    **dict.fromkeys(("rdkit", "tblite", "pyscf", "threadpoolctl"), "qm"),
    "distributed": "dask",
    "dask": "dask",
}

#: exceptions that mean the input was refused (exit 2); KeyError: a dataset lacks a key
BAD_INPUT: tuple[type[BaseException], ...] = (
    ValueError, KeyError, FileNotFoundError, FileExistsError, IsADirectoryError,
    NotADirectoryError, argparse.ArgumentError)


class JobFailed(RuntimeError):
    """A check or job ran to its end and failed: :func:`run_command` prints it, exit 1."""


# ----------------------------------------------------------------------------- parsers


def new_parser(prog: str, description: str, *, config: bool = True,
               logging_flags: bool = True) -> ArgumentParser:
    """A command's parser with ``--config FILE``, ``--print-config``, ``-v``, ``-q``,
    ``--log-file``.

    Args:
        prog: ``"hessid COMMAND"`` (shown in usage and errors).
        description: what the command does (first line of ``--help``).
        config: add ``--config``/``--print-config``.
        logging_flags: add ``-v``/``-q``/``--log-file`` (False for a parser that only holds
            subcommands, each of which has them).

    Returns:
        a :class:`jsonargparse.ArgumentParser` that raises ``argparse.ArgumentError`` instead
        of exiting on a usage error (:func:`run_command` turns it into exit 2).
    """
    parser = ArgumentParser(prog=prog, description=description, exit_on_error=False,
                            print_config="--print-config" if config else None, env_prefix=False,
                            default_env=False)
    if config:
        parser.add_argument("--config", action=ActionConfigFile,
                            help="YAML file of these options (as --print-config writes it); "
                                 "flags given after it override it")
    if not logging_flags:
        return parser
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more log output; -v also prints tracebacks of refused input")
    parser.add_argument("-q", "--quiet", action="store_true", default=False,
                        help="warnings and errors only")
    parser.add_argument("--log-file", type=str | None, default=None,
                        help="also append the log to this file")
    return parser


def attribute_docs(cls) -> dict[str, str]:
    """Per-field help from the ``Attributes:`` section of a dataclass docstring.

    Understands one field per entry (``name: text`` with indented continuation lines), several
    entries on one line separated by two spaces (``temperature: K.  friction: 1/ps.``) and
    several names sharing one text (``weights, projector: (n, N) ...``).

    Returns:
        ``{field name: help text}`` (fields without an entry are absent).
    """
    doc = inspect.getdoc(cls) or ""
    match = re.search(r"^Attributes:\s*$(.*?)(?=^\S|\Z)", doc, flags=re.M | re.S)
    if not match:
        return {}
    entries: list[str] = []
    for line in match.group(1).splitlines():
        if not line.strip():
            continue
        if re.match(r"^ {4}\S", line) or not entries:  # a new entry line (4-space indent)
            entries.append(line.strip())
        else:  # continuation
            entries[-1] += " " + line.strip()
    out: dict[str, str] = {}
    head = re.compile(r"(?:^|\s{2,})((?:[A-Za-z_]\w*)(?:, [A-Za-z_]\w*)*):\s")
    for entry in entries:
        marks = list(head.finditer(entry))
        for i, m in enumerate(marks):
            end = marks[i + 1].start() if i + 1 < len(marks) else len(entry)
            text = re.sub(r":\w+:`~?([^`]+)`", r"\1", entry[m.end():end].strip())
            text = text.replace("``", "")
            for name in m.group(1).split(", "):
                out[name] = text
    return out


def _default_of(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def add_dataclass(parser: ArgumentParser, cls, *, nested: str | None = None,
                  rename: Mapping[str, str] | None = None,
                  aliases: Mapping[str, Iterable[str]] | None = None,
                  positional: Iterable[str] = (), skip: Iterable[str] = (),
                  help: Mapping[str, str] | None = None) -> None:
    """Add one option per field of the dataclass ``cls`` (recursing into dataclass fields).

    The option of field ``hydrogen_mass`` is ``--hydrogen-mass`` (in a nested dataclass
    ``data``: ``--data.batch-size``); its destination, and so its config-file key, is the field
    name. Type and default come from the dataclass (a field without a default is required); a
    ``list`` field takes several values and may be repeated (``--datasets a.h5 --datasets b.h5``
    = ``--datasets a.h5 b.h5``; they add to a ``--config`` file's list; a bare ``list`` holds
    strings), a ``tuple[float, float]`` two (``--bond-range 2 6``);
    help comes from its ``Attributes:`` docstring (:func:`attribute_docs`). A ``bool`` field
    whose option has no dot gets ``--name``/``--no-name``; dotted ones take ``true``/``false``.

    Args:
        parser: the command's parser.
        cls: a dataclass type.
        nested: key prefix for the fields (``"trainer"`` → ``trainer.max_steps``).
        rename: field → option name when the unified CLI name differs from the field
            (``{"output_dir": "out"}`` gives ``--out``, key ``output_dir``;
            ``{"trainer.progress_bar": "progress"}`` gives ``--progress/--no-progress``).
        aliases: field → extra option strings (``{"trainer.max_steps": ["--steps"]}``).
        positional: fields given as positional arguments (top level only).
        skip: fields not offered on the command line (dotted for nested ones).
        help: field → help text overriding the docstring's.

    Raises:
        TypeError: ``cls`` is not a dataclass.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    rename, aliases, help = rename or {}, aliases or {}, help or {}
    skip, positional = set(skip), set(positional)
    hints = typing.get_type_hints(cls)
    docs = attribute_docs(cls)
    for f in dataclasses.fields(cls):
        key = f"{nested}.{f.name}" if nested else f.name
        if key in skip or not f.init:
            continue
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            add_dataclass(parser, hint, nested=key, rename=rename, aliases=aliases, skip=skip,
                          help=help)
            continue
        default = _default_of(f)
        kwargs: dict = {"help": help.get(key, docs.get(f.name, ""))}
        if default is not dataclasses.MISSING:
            kwargs["default"] = default
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        if hint is list or origin is list:  # --x A B --x C (a bare list holds strings)
            hint = args[0] if args else str
            kwargs["nargs"] = "+" if default is dataclasses.MISSING else "*"
            kwargs["action"] = _Collect
        elif origin is tuple and args and Ellipsis not in args and len(set(args)) == 1:
            hint, kwargs["nargs"] = args[0], len(args)  # --x A B for tuple[float, float]
        if "nargs" in kwargs and isinstance(kwargs.get("default"), tuple):
            kwargs["default"] = list(kwargs["default"])  # jsonargparse fills nargs values in place
        if key in positional:
            if default is not dataclasses.MISSING:
                kwargs["nargs"] = "?"
            parser.add_argument(key, type=hint, **kwargs)
            continue
        option = "--" + rename.get(key, key).replace("_", "-")
        strings = [option, *aliases.get(key, ())]
        if hint is bool and "." not in option:
            parser.add_argument(*strings, dest=key, action=ActionYesNo(no_prefix="no-"),
                                **{"default": False, **kwargs})
        else:
            if default is dataclasses.MISSING:
                kwargs["required"] = True
            parser.add_argument(*strings, dest=key, type=hint, **kwargs)


def add_run_flags(parser: ArgumentParser, *, resume: str | None = None,
                  overwrite: str | None = None, progress: bool = False) -> None:
    """Add the shared run-control flags a command has (each named the same everywhere).

    Args:
        resume: help text of ``--resume`` (None: the command has no resume).
        overwrite: help text of ``--overwrite`` (None: none).
        progress: add ``--progress/--no-progress`` (progress bars, on by default).
    """
    if resume is not None:
        parser.add_argument("--resume", action=ActionYesNo(no_prefix="no-"), default=False,
                            help=resume)
    if overwrite is not None:
        parser.add_argument("--overwrite", action=ActionYesNo(no_prefix="no-"), default=False,
                            help=overwrite)
    if progress:
        parser.add_argument("--progress", action=ActionYesNo(no_prefix="no-"), default=True,
                            help="progress bars (--no-progress: none)")


class _Collect(argparse.Action):
    """A list option: each occurrence adds its values (``--model A --model B C`` → [A, B, C]);
    after ``--config`` they add to the file's list."""

    def __call__(self, parser, namespace, values, option_string=None):
        namespace[self.dest] = [*(namespace.get(self.dest) or []), *values]


class _SetKey(argparse.Action):
    """``--set KEY=VALUE``: assign a config key (dotted) while parsing, VALUE read as YAML."""

    def __call__(self, parser, namespace, values, option_string=None):
        key, sep, text = str(values).partition("=")
        key = key.strip()
        if not sep or not key or key not in namespace or key in ("config", "print_config"):
            raise argparse.ArgumentError(self, f"expected KEY=VALUE with a config key, got "
                                               f"{values!r}")
        value = yaml.safe_load(text)
        if isinstance(namespace[key], str) and not isinstance(value, str):
            value = text.strip()  # a string option keeps "7" as written
        namespace[key] = value


def add_set_flag(parser: ArgumentParser) -> None:
    """Add ``--set KEY=VALUE`` (repeatable): assign any config key by its dotted name, e.g.
    ``--set loss.cov_weight=1``; applied where it stands on the command line, like the flags,
    and type-checked like them (VALUE is read as YAML)."""
    parser.add_argument("--set", action=_SetKey, dest=argparse.SUPPRESS,
                        default=argparse.SUPPRESS, metavar="KEY=VALUE",
                        help="assign a config key, e.g. --set loss.cov_weight=1 (repeatable)")


def signature_default(fn: Callable, name: str):
    """The default of parameter ``name`` of ``fn``: lets a command's own options dataclass
    take its defaults from the stage function it calls, so they are written once.

    Raises:
        KeyError: ``fn`` has no parameter ``name``.
        ValueError: the parameter has no default.
    """
    param = inspect.signature(fn).parameters[name]
    if param.default is inspect.Parameter.empty:
        raise ValueError(f"{fn.__qualname__}({name}) has no default")
    return param.default


def dataclass_from(cls, cfg: Namespace | Mapping, nested: str | None = None):
    """Build the dataclass ``cls`` from a parsed namespace (the fields :func:`add_dataclass`
    added; skipped fields keep their dataclass defaults; nested dataclasses recurse).

    Args:
        cls: the dataclass type given to :func:`add_dataclass`.
        cfg: the parsed :class:`jsonargparse.Namespace` (or a plain nested dict).
        nested: the same prefix as in :func:`add_dataclass`.
    """
    values = cfg.as_dict() if isinstance(cfg, Namespace) else dict(cfg)
    for part in nested.split(".") if nested else ():
        values = values.get(part) or {}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if not f.init or f.name not in values:
            continue
        hint = hints[f.name]
        value = values[f.name]
        if dataclasses.is_dataclass(hint):
            value = dataclass_from(hint, value)
        elif typing.get_origin(hint) is tuple and isinstance(value, list):
            value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs)


# ----------------------------------------------------------------------------- config file


def save_config(parser: ArgumentParser, cfg: Namespace, directory: str | Path,
                command: str) -> Path:
    """Write the resolved options of a run as YAML next to its outputs.

    The file is ``<directory>/hessid-<command>.yaml`` (spaces in ``command`` become ``-``);
    ``hessid <command> --config`` of it repeats the run. Written atomically (parallel ranks of
    one training run may write the same file).

    Args:
        parser: the parser that produced ``cfg``.
        cfg: the parsed namespace (for a subcommand: its own namespace).
        directory: the command's output folder (created).
        command: e.g. ``"train"`` or ``"data simulate"``.

    Returns:
        the path written.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"hessid-{command.replace(' ', '-')}.yaml"
    clean = cfg.clone()
    for key in ("config", "print_config"):
        if key in clean:
            del clean[key]
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    # keep None values (jsonargparse ≥ 4.49 names the flag skip_unset, older ones skip_none)
    version = tuple(int(x) for x in re.findall(r"\d+", jsonargparse.__version__)[:2])
    keep_none = {"skip_unset": False} if version >= (4, 49) else {"skip_none": False}
    tmp.write_text(parser.dump(clean, **keep_none))
    tmp.replace(path)
    return path


# ----------------------------------------------------------------------------- running


def configure_logging(verbose: int = 0, quiet: bool = False, log_file: str | None = None) -> None:
    """Log records of the ``hessid`` loggers to stderr (INFO; -v DEBUG; -q WARNING) and, with
    ``log_file``, append them to that file too. Calling again replaces the handlers it added."""
    logger = logging.getLogger("hessid")
    for h in [h for h in logger.handlers if getattr(h, "_hessid_cli", False)]:
        logger.removeHandler(h)
        h.close()
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    fmt = logging.Formatter("%(levelname)s %(name)s: %(message)s")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    for h in handlers:
        h.setFormatter(fmt)
        h._hessid_cli = True  # type: ignore[attr-defined]
        logger.addHandler(h)
    logger.setLevel(level)


def missing_extra_message(exc: ImportError, default_extra: str | None = None) -> str | None:
    """One line for an ImportError: the extra to install when a dependency is missing.

    Args:
        exc: the ImportError.
        default_extra: the command's extra, used when the missing module is not in
            :data:`EXTRA_OF_MODULE`.

    Returns:
        ``"needs the 'training' extra (No module named 'openmm'): pip install
        'hessid[training]'"``; the error's own text when it names no module (a library's
        message such as "install hessid[dask]"); None when the missing name is part of hessid
        itself (a bug, not a missing extra: the caller re-raises).
    """
    top = (exc.name or "").split(".")[0]
    if top == "hessid":
        return None
    extra = EXTRA_OF_MODULE.get(top) or (default_extra if top else None)
    if extra is None:
        return str(exc)
    return f"needs the '{extra}' extra ({exc}): pip install 'hessid[{extra}]'"


def read_yaml_mapping(path: str | Path) -> dict:
    """A YAML file that must hold a mapping (or nothing).

    Raises:
        FileNotFoundError: no such file.
        ValueError: malformed YAML (the message names the file, line and column) or a top
            level that is not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ValueError(f"{path}{where}: malformed YAML ({problem})") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of keys, got "
                         f"{type(raw).__name__}")
    return raw


#: jsonargparse's names of the types it expected
_TYPE_WORDS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}


def one_line(text: str) -> str:
    """A usage-error message on one line: jsonargparse's ``Parser key "optim.lr": Expected a
    <class 'float'>. Got value: fast`` becomes ``optim.lr: expected a number, got 'fast'``;
    any other message has its lines joined."""
    m = re.search(r'key "([^"]+)":\s*Expected a <class \'(\w+)\'>\.\s*Got value:\s*(.*)$',
                  text, flags=re.S)
    if m:
        got = m.group(3).strip().splitlines()[0] if m.group(3).strip() else ""
        return f"{m.group(1)}: expected {_TYPE_WORDS.get(m.group(2), m.group(2))}, got {got!r}"
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


def _config_files(argv: list[str]) -> list[str]:
    """The files given to ``--config`` in ``argv`` (``--config F`` and ``--config=F``)."""
    out = []
    for i, a in enumerate(argv):
        if a == "--config" and i + 1 < len(argv):
            out.append(argv[i + 1])
        elif a.startswith("--config="):
            out.append(a.split("=", 1)[1])
    return out


def _runtime(cfg: Namespace) -> Namespace:
    """The namespace holding -v/-q/--log-file (a subcommand's, when there is one)."""
    sub = cfg.get("subcommand")
    return cfg[sub] if sub and isinstance(cfg.get(sub), Namespace) else cfg


def run_command(build_parser: Callable[[str], ArgumentParser],
                run: Callable[[Namespace, ArgumentParser], int],
                argv: list[str], prog: str, extra: str | None = None) -> int:
    """Parse ``argv``, run the command and return its exit code (:data:`EXIT_CODES`).

    Usage errors and bad input (:data:`BAD_INPUT`, a missing extra) print one line on stderr
    and return 2 (with ``-v`` also the traceback); :class:`JobFailed` and other ``OSError``
    print one line and return 1; ``--help``/``--print-config`` return 0. Anything else
    propagates (a bug: Python prints the traceback).

    Args:
        build_parser: the command's ``build_parser``.
        run: the command's ``run``.
        argv: the arguments after the command name.
        prog: ``"hessid COMMAND"``.
        extra: the command's optional extra, named when an import fails.
    """
    verbose = sum(a in ("-v", "--verbose") or bool(re.fullmatch(r"-v+", a)) for a in argv)
    try:
        for path in _config_files(argv):  # name the file and line of malformed YAML
            read_yaml_mapping(path)
        parser = build_parser(prog)
        cfg = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --print-config (or an action that exits)
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    except (argparse.ArgumentError, ValueError, FileNotFoundError) as exc:
        if verbose:
            traceback.print_exc(file=sys.stderr)
        print(f"{prog}: error: {one_line(str(exc))} (see {prog} --help)", file=sys.stderr)
        return EXIT_USAGE
    rt = _runtime(cfg)
    if cfg.get("subcommand"):
        prog = f"{prog} {cfg.subcommand}"
    verbose = int(rt.get("verbose") or 0)
    configure_logging(verbose, bool(rt.get("quiet")), rt.get("log_file"))
    try:
        return int(run(cfg, parser) or EXIT_OK)
    except ImportError as exc:
        message = missing_extra_message(exc, extra)
        if message is None:
            raise
        _say(prog, message, verbose)
        return EXIT_USAGE
    except BAD_INPUT as exc:
        _say(prog, f"refused: {_text(exc)}", verbose)
        return EXIT_USAGE
    except (JobFailed, OSError) as exc:
        _say(prog, f"failed: {_text(exc)}", verbose)
        return EXIT_FAILED


def _text(exc: BaseException) -> str:
    # KeyError's str() is the repr of its key; show the message itself
    return str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)


def _say(prog: str, message: str, verbose: int) -> None:
    if verbose:
        traceback.print_exc(file=sys.stderr)
    print(f"{prog}: {one_line(message)}", file=sys.stderr)
