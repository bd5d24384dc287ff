"""Renamed: ``python -m tools.bench`` (this alias runs it with ``--config mimic``).

    python -m tools.bench_train_step [tools.bench's arguments]

``tools.bench_train_step`` timed the MIMIC experiment's model with a random BERT-base; that
is ``python -m tools.bench --config mimic`` now, which also counts FLOPs, measures memory
and compares with the same step in plain PyTorch. Any ``--config`` given wins.
"""

from __future__ import annotations

import sys

from tools import bench


def main(argv: list[str] | None = None) -> dict:
    """``tools.bench.main`` with ``--config mimic`` first (a later ``--config`` wins)."""
    argv = sys.argv[1:] if argv is None else argv
    return bench.main(["--config", "mimic", *argv])


if __name__ == "__main__":
    main()
