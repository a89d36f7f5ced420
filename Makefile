# Two entry points: `make demo` (set up, then prune the embedded default) and `make test`.
VENV ?= .venv
PYTHON ?= python3
STAMP := $(VENV)/.installed

.PHONY: demo test bench lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/autoprune demo --out demo-out

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q --durations=10

bench: $(STAMP)
	$(VENV)/bin/python bench/resnet20_cifar10.py

lint: $(STAMP)
	$(VENV)/bin/pip install --quiet ruff==0.14.0
	$(VENV)/bin/ruff check --select F,E9,I --line-length 120 autoprune solvers api tests bench

clean:
	rm -rf $(VENV) demo-out .pytest_cache
