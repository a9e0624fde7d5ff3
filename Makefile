# One-command entry points. `make demo` and `make test` set everything up on a fresh Debian machine with Python 3.11.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# Some machines' pip configuration names local indexes that do not exist; pip warns once per package.
PIP_NOISE := is ignored: it is neither a file nor a directory
# setuptools warns on every editable install that folders named like the packages take precedence on imports:
# here that is the point (the packages are those folders).
EDITABLE_QUIET := PYTHONWARNINGS="ignore:Editable installation"

.PHONY: setup java browser demo test lint format bench clean

setup: $(STAMP) java

# The runtime dependencies at the image's pins (deploy/constraints.txt): the tests run what the image ships.
$(STAMP): pyproject.toml deploy/constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --upgrade pip 2>&1 | { grep -v "$(PIP_NOISE)" || true; }
	@echo "installing clickstream-rfm and its dependencies into $(VENV) ..."
	@$(EDITABLE_QUIET) $(BIN)/python -m pip install --quiet -c deploy/constraints.txt -e '.[dev]' 2>&1 | { grep -v "$(PIP_NOISE)" || true; }
	@touch $@

# The KCL MultiLangDaemon is Java: a JRE 17+ is required. Installs Debian's headless JRE when run as root.
java:
	@bash scripts/ensure-java.sh

# Headless Chromium renders `clickstream report` in its test (`make test` only; the demo does not need it).
# Installs Debian's chromium-headless-shell as root.
browser:
	@command -v chromium-headless-shell >/dev/null || command -v chromium >/dev/null || { \
	  if [[ $$(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then \
	    echo "installing chromium-headless-shell (renders the HTML report in its test) ..." >&2; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium-headless-shell >/dev/null \
	      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium-headless-shell >/dev/null; }; \
	  else echo "headless Chromium is missing: sudo apt-get install chromium-headless-shell" >&2; exit 1; fi; }

demo: setup
	@$(BIN)/clickstream demo

# Test files run in parallel (one process each): the end-to-end files mostly wait on KCL lease timers.
test: setup browser lint
	@$(BIN)/python -m pytest -n 3 --dist loadfile

lint: $(STAMP)
	@$(BIN)/ruff check .
	@$(BIN)/ruff format --check .
	@$(BIN)/mypy

format: $(STAMP)
	@$(BIN)/ruff format .
	@$(BIN)/ruff check --fix .

bench: setup
	@$(BIN)/python -m bench

clean:
	rm -rf $(VENV) state demo-output .pytest_cache .mypy_cache .ruff_cache
