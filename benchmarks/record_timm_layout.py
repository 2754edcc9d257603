"""Record timm's state-dict layout (keys and shapes, in order) for every architecture we share with timm.

Writes ``tests/data/timm_state_dict_keys.json.gz``: ``{timm_name: [[key, shape], ...]}`` in state-dict order,
for every timm name in :data:`visionattn.models.zoo.TIMM_NAMES`. ``tests/models/test_timm_layout.py`` checks our
models against it without timm. The file is gzip with mtime 0 and sorted model names, so re-recording with the
same timm gives the same bytes. Re-record after adding a pair to ``TIMM_NAMES``.

timm needs torchvision, which has no CPU build here; run it in the timm virtual environment with the stub on the
path (see ``../shared/tools/timm_side_by_side/README.md`` for the one-time setup)::

    PYTHONPATH=../shared/tools/timm_side_by_side/torchvision_stub ~/timm-venv/bin/python \\
        benchmarks/record_timm_layout.py

The models are built on the ``meta`` device: no weights are allocated, so the whole record takes seconds.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import sys
from pathlib import Path

import torch

from visionattn.models.zoo import TIMM_NAMES

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "timm_state_dict_keys.json.gz"


def timm_layout(timm_name: str) -> list[list]:
    """``[[key, shape], ...]`` of timm's model ``timm_name`` (1000 classes), in state-dict order."""
    import timm

    with torch.device("meta"):
        model = timm.create_model(timm_name, pretrained=False)
    return [[key, list(tensor.shape)] for key, tensor in model.state_dict().items()]


def write_record(record: dict[str, list[list]], path: Path) -> None:
    """Gzip-compressed JSON with mtime 0 (reproducible bytes), one model per line."""
    lines = ",\n".join(f"{json.dumps(name)}: {json.dumps(record[name])}" for name in sorted(record))
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0) as gz:
        gz.write(("{\n" + lines + "\n}\n").encode())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"output file (default {OUT})")
    args = parser.parse_args(argv)
    try:
        import timm
    except ImportError as err:
        print(f"timm is not importable ({err}); run this script in a virtual environment with timm and the "
              "torchvision stub on PYTHONPATH, as ../shared/tools/timm_side_by_side/README.md describes:\n"
              "    PYTHONPATH=../shared/tools/timm_side_by_side/torchvision_stub ~/timm-venv/bin/python "
              "benchmarks/record_timm_layout.py", file=sys.stderr)
        return 2
    record = {timm_name: timm_layout(timm_name) for timm_name in sorted(set(TIMM_NAMES.values()))}
    write_record(record, args.out)
    tensors = sum(len(v) for v in record.values())
    print(f"timm {timm.__version__}: {len(record)} models, {tensors} state-dict entries -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
