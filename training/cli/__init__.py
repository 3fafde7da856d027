"""The training commands of ``hessid`` (one module per command: data, targets, train,
simulate, evaluate, report, demo). :mod:`hessid.cli` lists them and imports one only when it
runs; each defines ``build_parser(prog)`` and ``run(cfg, parser)`` (:mod:`hessid.cli.options`).
:mod:`.common` holds the parser pieces they share.
"""
