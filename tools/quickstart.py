"""The main job: a small LoVT pretraining that runs on a CPU in about a minute.

    make demo            # or: .venv/bin/python -m tools.quickstart

This first version pretrains a small LoVT (ResNet-18 at 224 px, a 2-layer BERT) on
random image-report batches for a fixed number of steps and prints the named loss
components; the full quickstart (SynthCXR pretraining, localized evaluation, the
comparison table) replaces it when those pieces land.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.quickstart", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--backend", choices=("tensorflow", "jax", "torch"), default=None)
    args = parser.parse_args(argv)
    if args.backend:
        os.environ["KERAS_BACKEND"] = args.backend
    import keras
    import numpy as np

    from lovt_keras.testing.fixtures import random_batch, tiny_pretrainer

    keras.utils.set_random_seed(0)
    model = tiny_pretrainer(image_size=args.image_size, max_sentences=6, max_tokens=48,
                            projection_dim=128, hidden_dim=256, num_pooling_heads=4)
    batch = random_batch(batch_size=args.batch_size, image_size=args.image_size,
                         max_tokens=48, max_sentences=6, seed=0)
    model.compile(optimizer=keras.optimizers.AdamW(learning_rate=1e-3, weight_decay=1e-6))
    print(f"backend: {keras.backend.backend()}; LoVT with ResNet-18 at {args.image_size} px, "
          f"{model.count_params():,} parameters; {args.steps} steps on a fixed random batch")
    start = time.time()
    history = model.fit(batch, batch_size=args.batch_size, epochs=args.steps, verbose=0).history
    for name in sorted(history):
        values = np.asarray(history[name])
        print(f"  {name:32s} first {values[0]:.4f}  last {values[-1]:.4f}")
    print(f"done in {time.time() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
