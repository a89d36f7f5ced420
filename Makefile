# Two entry points: `make demo` (set up, then run the embedded default job through the service) and `make test`.
VENV ?= .venv
PYTHON ?= python3
STAMP := $(VENV)/.installed

.PHONY: demo cli-demo test bench bench-load lint clean postgres browser

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $(STAMP)

# The default job as users meet it: trains a digits ResNet-20, starts the API and a worker,
# submits over HTTP, polls with progress, downloads and checks the artifacts, prints the report,
# stops both.
demo: $(STAMP)
	$(VENV)/bin/python -m api.demo --dir demo-service

# The same job with the CLI alone, no service.
cli-demo: $(STAMP)
	$(VENV)/bin/autoprune demo --out demo-out

# Two workers, whole files each (module fixtures such as a started service stay in one process):
# the service tests spend much of their time waiting on worker processes, so two overlap well.
# Files go out in collection order, which puts the slow service tests (tests/api) first; xdist's
# default reorder (most tests first) left the few-but-slow files for the end, on one worker.
test: $(STAMP) postgres browser
	$(VENV)/bin/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=10

# PostgreSQL server binaries for tests/api (each test starts a throwaway cluster on loopback).
# Idempotent; needs root and apt-get, otherwise those tests are skipped with a message.
postgres:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing PostgreSQL (apt-get) for the job-store tests"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null; \
	else echo "PostgreSQL binaries not found and not root: the PostgreSQL tests will be skipped"; fi

# Debian's Chromium for the dashboard test (Playwright drives it; `playwright install` would
# download a browser, which needs the network). Idempotent; needs root and apt-get, otherwise
# that test is skipped with a message.
browser:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Chromium (apt-get) for the dashboard test"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; \
	else echo "/usr/bin/chromium not found and not root: the dashboard test will be skipped"; fi

# The benchmark suite's CPU setting (ResNet-20, seed 0; resumable, cached in bench/.cache) and the
# fidelity checks; writes bench/results/RESULTS.md. Options: `make bench BENCH_ARGS="--archs ... --seeds 0,1"`.
bench: $(STAMP)
	$(VENV)/bin/python bench/fidelity.py
	$(VENV)/bin/python bench/suite.py $(BENCH_ARGS)

# Load on the job service over loopback (wrk against GET /jobs/{id}, 50 MiB submissions); needs `wrk`.
bench-load: $(STAMP)
	$(VENV)/bin/python bench/load_api.py

lint: $(STAMP)
	$(VENV)/bin/pip install --quiet ruff==0.14.0
	$(VENV)/bin/ruff check --select F,E9,I --line-length 120 autoprune solvers api tests bench

clean:
	rm -rf $(VENV) demo-out demo-service .pytest_cache
