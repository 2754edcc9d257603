"""Suite-wide settings."""

import os

import torch

# under pytest-xdist each worker process gets one intra-op thread, so two workers share two cores without
# oversubscribing them (which slows small-tensor tests several-fold)
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
