# The two set-up commands of the README: `make demo` (the main job) and `make test`.
# Each creates the virtual environment if missing, installs torch==2.13.0 first (so pip never resolves a CUDA
# build), then the project, then runs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint install data browser clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,train]'
	touch $(STAMP)

install: $(STAMP)

# Fashion-MNIST from Debian's package, where apt is available; nothing is downloaded at run time.
data:
	@if [ -d /usr/share/datasets/fashion-mnist ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
		{ apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null; } || \
		echo "warning: could not install dataset-fashion-mnist; pass --data-dir"; \
	else echo "note: Fashion-MNIST not found and apt unavailable; pass --data-dir"; fi

# Headless Chromium for the report's browser test (tests/show/test_report.py; skipped where it is missing), from
# Debian's package where apt is available and we are root; otherwise a note, never a failure.
browser:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		apt-get install -y -q chromium >/dev/null 2>&1 || \
		{ apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; } || \
		echo "warning: could not install chromium; the report's browser test will be skipped"; \
	else echo "note: chromium not found and apt unavailable (or not root); the report's browser test will be skipped"; fi

# The main job: the plain small-image ResNet-20 against SE, ECA, CBAM (channel and spatial gates) and SK (branch
# attention) on Fashion-MNIST, one recipe, three seeds each, trained on a 6000-image class-balanced subset for
# 2 epochs; then runs/demo/report.html (table, plots, pictures from the trained models, speed of the layers).
# About 11 minutes on 2 idle CPU cores (15 runs of 35-50 s, costs 20 s, report 10 s, set-up 1 min). The
# comparison of every mechanism is benchmarks/fashion_mnist.sh. Running it again reuses finished runs.
DEMO_MODELS := resnet20,se_resnet20,eca_resnet20,cbam_resnet20,sk_resnet20
DEMO_ARGS ?= --train-subset 6000 --epochs 2 --warmup-epochs 0.2 --seeds 0,1,2

demo: $(STAMP) data
	$(PY) -m visionattn compare --models $(DEMO_MODELS) --data fashion-mnist $(DEMO_ARGS) --out runs/demo
	$(PY) -m visionattn report --out runs/demo

test: $(STAMP) data browser
	$(PY) -m pytest -q -n 2 --dist loadgroup

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
