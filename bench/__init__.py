"""The benchmark suite of autoprune: a package run from the repository root.

    .venv/bin/python -m bench.suite [--archs ...] [--seeds 0,1]   # the suite (see bench/README.md)
    .venv/bin/python -m bench.fidelity [--arch resnet20]           # fidelity checks (a), (b)
    .venv/bin/python -m bench.load_api                              # load test of the job service

Its modules import each other as ``bench.<module>``; nothing here touches ``sys.path``.
"""
