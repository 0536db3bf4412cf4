# Two entry points, each self-contained on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch and torchvision are pinned to the releases this project is tested with; pip takes them
# from the local wheel cache where one exists.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test venv lint typecheck clean bench gpu-check fuzz

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip setuptools wheel
	$(PIP) install $(TORCH_PINS)
	$(PIP) install -e '.[test]'
	touch $@

venv: $(VENV)/.installed

# The whole check CI runs: lint, format, types, then every test (`-m 'not slow'` for a quick loop):
# one pytest-xdist worker per core (one torch thread each), then the tests that start
# torch.distributed process groups, on their own so that their rendezvous never share the machine.
TEST_WORKERS ?= 2
test: lint typecheck
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal -m 'not multiprocess' tests
	$(PY) -m pytest -q -m multiprocess tests

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: venv
	$(VENV)/bin/mypy denet/dsl denet/layers denet/kernels

demo: venv
	$(PY) examples/digits_demo.py --output demo-out

# The description-string fuzzer at length (DENET_FUZZ_STRINGS=5000, DENET_FUZZ_SEED=1 by default).
fuzz: venv
	$(PY) -m pytest -q -s -m slow tests/dsl/test_dsl_fuzz.py

bench: venv
	$(PY) bench/kernels.py
	$(PY) bench/models.py
	$(PY) bench/data.py
	$(PY) bench/detect.py

# On a machine with an NVIDIA GPU, with that machine's own python3 (see bench/gpu_check.sh).
gpu-check:
	bash bench/gpu_check.sh

clean:
	rm -rf $(VENV) demo-out gpu-check
