# The two commands of the README: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# A CPU build of this torch version is what the project is tested against; pinning it here keeps
# pip from pulling a multi-GB CUDA build on machines without a GPU.
TORCH_PIN := torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint bench browser coverage-timm clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_PIN)"
	$(PY) -m pip install --quiet -e ".[demo,test,ray,lint]" "$(TORCH_PIN)"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/leantorch demo --out out

# The whole suite, model-level (slow) tests included, after the lint and type checks: what CI runs. No test has
# a wall-clock limit.
test: $(STAMP) browser lint
	$(PY) -m pytest -n 2 -q tests

# The development loop: everything but the tests marked slow (model-level runs, README examples).
test-fast: $(STAMP)
	$(PY) -m pytest -n 2 -q -m "not slow" tests

# Lint and type checks (settings in pyproject.toml): ruff on all the code, mypy --strict on the packages listed
# in [tool.mypy] files (quant and ptq so far). Also run by the pre-commit hooks (.pre-commit-config.yaml).
lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy

# The HTML report is tested in a real headless Chromium (Debian's package). Where it cannot be installed
# (not root, no apt) that one test is skipped and says why; everything else still runs.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1; } || \
		echo "note: chromium could not be installed; the report's browser test will be skipped"

bench: $(STAMP)
	$(PY) benchmarks/quantsim.py

# benchmarks/coverage.py's timm group, merged into its results file. timm is installed without its dependencies and
# is no extra of leantorch: it imports torchvision, whose only wheels here are CUDA builds; timm's models need just
# torchvision's FrozenBatchNorm2d, which benchmarks/shims/torchvision provides when torchvision is missing.
coverage-timm: $(STAMP)
	$(PY) -m pip install --quiet --no-deps timm
	$(PY) -m pip install --quiet pyyaml huggingface_hub safetensors  # timm's other dependencies
	$(PY) benchmarks/coverage.py --group timm --out benchmarks/results/coverage.json --merge

clean:
	rm -rf $(VENV) out .pytest_cache
