"""Benchmark of the SynthCXR generator on one core.

Prints images per second of ``generate_sample`` at each size and of ``generate_split``
end to end (rendering, reports, Arrow encoding and writing to disk)::

    python -m tools.bench_synthcxr --num 500
    python -m tools.bench_synthcxr --num 200 --sizes 224 512 --split_num 1000

Target: >= 200 images/s for generate_sample at 224 px on one core.
"""

import os

# One core: keep BLAS (used by the upsampling matmuls) single-threaded. Must be set
# before numpy is imported to take effect.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from lovt_keras.data.synthcxr import generate_sample, generate_split, sample_rng  # noqa: E402


def _rate(fn, count: int, repeats: int) -> tuple[float, float]:
    """Images/s by wall clock and by this process's CPU time, best of ``repeats``.

    On a shared machine the wall-clock rate drops with the load; the CPU-time rate is
    what one dedicated core would give.
    """
    wall = cpu = float("inf")
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall = min(wall, time.perf_counter() - start)
        cpu = min(cpu, time.process_time() - start_cpu)
    return count / wall, count / max(cpu, 1e-9)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=500, help="samples per timing")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 512])
    parser.add_argument("--split_num", type=int, default=500, help="samples for generate_split")
    parser.add_argument("--split_size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    if hasattr(os, "sched_getaffinity"):
        print(f"cpus available: {len(os.sched_getaffinity(0))}, load: {os.getloadavg()[0]:.2f}")
    rates = {}
    for size in args.sizes:
        generate_sample(sample_rng(0, "train", 0), size)  # warm caches
        num = args.num if size <= 256 else max(1, args.num // 4)

        def run(size=size, num=num):
            for i in range(num):
                generate_sample(sample_rng(0, "train", i), size)

        key = f"generate_sample_{size}px"
        rates[key], rates[key + "_cpu"] = _rate(run, num, args.repeats)
        print(
            f"generate_sample  {size:4d} px: {rates[key]:8.1f} images/s wall, "
            f"{rates[key + '_cpu']:8.1f} images/s per CPU second"
        )

    with tempfile.TemporaryDirectory(prefix="bench-synthcxr-") as tmp:
        counter = iter(range(10**6))

        def run_split():
            # A fresh cache folder each time, so datasets cannot reuse a previous run.
            generate_split(
                args.split_num, 0, args.split_size, cache_dir=os.path.join(tmp, str(next(counter)))
            )

        key = f"generate_split_{args.split_size}px"
        rates[key], rates[key + "_cpu"] = _rate(run_split, args.split_num, max(1, args.repeats - 1))
        print(
            f"generate_split   {args.split_size:4d} px: {rates[key]:8.1f} images/s wall, "
            f"{rates[key + '_cpu']:8.1f} images/s per CPU second "
            f"({args.split_num} samples, with Arrow writing)"
        )
    return rates


if __name__ == "__main__":
    main(sys.argv[1:])
    sys.exit(0)
