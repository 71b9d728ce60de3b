# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export RAY_AUTH_MODE ?= disabled
# the loopback S3 endpoint (moto) that `make services` starts
S3_PORT ?= 9000

.PHONY: demo test lint services services-stop install clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

services: $(STAMP) ## start Redis and the S3 endpoint on loopback (no-op when already up)
	S3_PORT=$(S3_PORT) bash infra/local/services.sh start

services-stop:
	bash infra/local/services.sh stop

# ruff lint and format check over the tree; mypy over the packages pyproject's [tool.mypy] lists
# (orchestrator, workers, training: untyped definitions refused).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: $(STAMP) services lint
	TEST_S3_ENDPOINT=http://127.0.0.1:$(S3_PORT) $(BIN)/python -m pytest -q

# One job of every task, then examples/workflows.jsonl (chains of steps and the built-in chains).
demo: $(STAMP)
	$(BIN)/python examples/make_inputs.py
	$(BIN)/audio-omni batch examples/demo.jsonl --out out/demo
	$(BIN)/audio-omni batch examples/workflows.jsonl --out out/demo/workflows
	@echo "demo results (audio, video + metadata JSON): $(CURDIR)/out/demo/ (report: out/demo/report.html)"
	@echo "workflow steps: $(CURDIR)/out/demo/workflows/ (report: out/demo/workflows/report.html)"

clean:
	rm -rf out .pytest_cache
