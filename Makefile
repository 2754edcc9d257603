# The two set-up commands of the README: `make demo` (the main job) and `make test`.
# Each creates the virtual environment if missing, installs torch==2.13.0 first (so pip never resolves a CUDA
# build), then the project, then runs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint install data clean

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

# The main job: the plain small-image ResNet against every channel and branch mechanism on Fashion-MNIST, one
# recipe, trained on a 6000-image class-balanced subset for 2 epochs in about 10 minutes on 2 CPU cores
# (the full-data comparison is benchmarks/fashion_mnist.sh). Running it again reuses finished runs.
CHANNEL_MODELS := se_resnet20,eca_resnet20,cbam_resnet20,bam_resnet20,ge_theta_minus_resnet20,ge_theta_resnet20,ge_theta_plus_resnet20
BRANCH_MODELS := sk_resnet20,splat_resnet20,condconv_resnet20,dynamic_conv_resnet20
DEMO_MODELS := resnet20,$(CHANNEL_MODELS),$(BRANCH_MODELS)
DEMO_ARGS ?= --train-subset 6000 --epochs 2 --warmup-epochs 0.2 --seeds 0

demo: $(STAMP) data
	$(PY) -m visionattn compare --models $(DEMO_MODELS) --data fashion-mnist $(DEMO_ARGS) --out runs/demo

test: $(STAMP) data
	$(PY) -m pytest -q -n 2 --dist loadgroup

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
