# Two entry points: `make demo` (set up, then run the embedded default job through the service) and `make test`.
VENV ?= .venv
PYTHON ?= python3
STAMP := $(VENV)/.installed

.PHONY: demo cli-demo test bench bench-load lint typecheck contracts clean postgres browser

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
# The static checks (seconds) run first, so a lint, type or import-contract error fails fast.
test: $(STAMP) lint typecheck contracts postgres browser
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
	$(VENV)/bin/python -m bench.fidelity
	$(VENV)/bin/python -m bench.suite $(BENCH_ARGS)

# Load on the job service over loopback (wrk against GET /jobs/{id}, 50 MiB submissions); needs `wrk`.
bench-load: $(STAMP)
	$(VENV)/bin/python -m bench.load_api

# ruff, mypy and import-linter come with the test extras; their settings are in pyproject.toml.
lint: $(STAMP)
	$(VENV)/bin/ruff check autoprune solvers api tests bench
	$(VENV)/bin/ruff format --check autoprune solvers api tests bench

# mypy over the scope in [tool.mypy] files (solvers, api/jobs, api/worker, the validator).
typecheck: $(STAMP)
	$(VENV)/bin/mypy

# Import contracts ([tool.importlinter]): api -> autoprune -> solvers; no torch in solvers.
contracts: $(STAMP)
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) demo-out demo-service .pytest_cache

# The docker-compose topology built and run end to end (deploy/compose_test.py, docs/deploy.md):
# PostgreSQL, the API and two workers from locally built images on the host's network; a digits
# job survives a worker container's `docker kill` and an API restart. As root it installs
# docker.io, docker-compose and debootstrap when missing and starts dockerd; the base images are
# built once and kept in docker's image store. Without root or docker it says why and skips.
.PHONY: compose-test
compose-test: $(STAMP)
	$(VENV)/bin/python deploy/compose_test.py $(COMPOSE_TEST_ARGS)
