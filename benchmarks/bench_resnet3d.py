"""Peak memory and volumes/s of 3D ResNet-18 training on CPU, by volume depth and size, measured in one run.

    .venv/bin/python benchmarks/bench_resnet3d.py [--depths 4 16 64] [--sizes 128 256] [--batch 1 4]
        [--steps 3] [--threads N] [--max-gib 12] [--budget-gib 24] [--step-seconds 60]

Trains paper 002's ResNet3D-18 (3 channels, 3 classes, Adam lr 1e-3, cross-entropy) on random volumes of
shape (batch, 3, depth, size, size). Each (depth, size, batch) runs in a fresh subprocess, so its peak RSS
is its own: one warm-up step, then timed steps (volumes/s from the median step). Two batch sizes give the
training memory per volume (the slope of peak RSS in batch) and the fixed part (the intercept), from which
the largest batch that fits --budget-gib is extrapolated linearly; batch 1 and 2 are too close for small
volumes, where allocator and library overheads blur a slope of a few MB. A configuration whose peak,
predicted from the measured ones by voxel count, would exceed --max-gib is not run; its row is
extrapolated and marked so.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from covidlens.models import create_model

MODEL = "ResNet3D-18"
CHANNELS = 3
CLASSES = 3
GIB = 2**30
PAPER_BATCHES = (8, 32)


def current_rss() -> int:
    """This process's resident set size now, in bytes."""
    resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    return resident_pages * resource.getpagesize()


def peak_rss() -> int:
    """This process's peak resident set size so far, in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, or 'unknown'."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def measure(depth: int, size: int, batch: int, steps: int, threads: int, step_seconds: float) -> dict[str, float]:
    """Train for one warm-up step and up to `steps` timed ones in this process; return memory and speed."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = create_model(MODEL, num_classes=CLASSES, in_chans=CHANNELS)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    volumes = torch.randn(batch, CHANNELS, depth, size, size)
    labels = torch.randint(0, CLASSES, (batch,))
    rss_model = current_rss()

    def step() -> float:
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(volumes), labels)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    warmup = step()
    # Cut the timed steps so they take about `step_seconds` in all, but time at least one; the median step
    # is the least disturbed by other work on the machine.
    timed = max(1, min(steps, int(step_seconds // warmup)))
    seconds = statistics.median(step() for _ in range(timed))
    peak = peak_rss()
    return {
        "rss_model": rss_model,
        "peak": peak,
        "training": peak - rss_model,
        "steps": timed,
        "volumes_per_second": batch / seconds,
    }


def measure_in_subprocess(depth: int, size: int, batch: int, args: argparse.Namespace) -> dict[str, float]:
    """Run `measure` in a fresh Python process and return its result."""
    command = [
        sys.executable, __file__, "--measure", str(depth), str(size), str(batch),
        "--steps", str(args.steps), "--threads", str(args.threads), "--step-seconds", str(args.step_seconds),
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"depth {depth}, size {size}, batch {batch} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


@dataclass
class Row:
    """One (depth, size): its measurements per batch and the linear memory model fitted to them."""

    depth: int
    size: int
    runs: dict[int, dict[str, float]]
    fixed: float  # bytes at batch 0 (the intercept)
    per_volume: float  # bytes per volume (the slope)
    volumes_per_second: float
    extrapolated: bool

    @property
    def voxels(self) -> int:
        """Voxels in one volume (one channel)."""
        return self.depth * self.size * self.size

    def predicted_peak(self, batch: int) -> float:
        """Peak RSS in bytes at `batch`, from the linear model."""
        return self.fixed + self.per_volume * batch

    def largest_batch(self, budget: float) -> int:
        """The largest batch whose predicted peak fits `budget` bytes."""
        return max(0, math.floor((budget - self.fixed) / self.per_volume))


def fit_memory(runs: dict[int, dict[str, float]]) -> tuple[float, float]:
    """(fixed bytes, bytes per volume) from peak RSS at two batch sizes, or from one (all training memory)."""
    batches = sorted(runs)
    if len(batches) >= 2:
        small, large = batches[0], batches[-1]
        slope = (runs[large]["peak"] - runs[small]["peak"]) / (large - small)
        return runs[small]["peak"] - slope * small, slope
    (only,) = batches
    return runs[only]["rss_model"], runs[only]["training"] / only


def extrapolate(depth: int, size: int, reference: Row) -> Row:
    """A row predicted from a measured one, scaling per-volume memory and time by voxel count."""
    scale = depth * size * size / reference.voxels
    return Row(
        depth, size, {}, reference.fixed, reference.per_volume * scale,
        reference.volumes_per_second / scale, extrapolated=True,
    )


def run_all(args: argparse.Namespace) -> list[Row]:
    """Measure (or extrapolate) every (depth, size), smallest volumes first."""
    rows: list[Row] = []
    for depth, size in sorted(((d, s) for d in args.depths for s in args.sizes), key=lambda ds: ds[0] * ds[1] ** 2):
        measured = [row for row in rows if not row.extrapolated]
        if measured:
            # Per-voxel memory falls as volumes grow (stride-2 layers round depth up), so the largest
            # measured volume gives the closest (and a cautious) prediction.
            predicted = extrapolate(depth, size, max(measured, key=lambda row: row.voxels))
            if predicted.predicted_peak(max(args.batch)) > args.max_gib * GIB:
                print(f"  depth {depth:>3}, {size} px: predicted peak over {args.max_gib:g} GiB, not run", flush=True)
                rows.append(predicted)
                continue
        runs = {}
        for batch in args.batch:
            print(f"  depth {depth:>3}, {size} px, batch {batch} ...", flush=True)
            runs[batch] = measure_in_subprocess(depth, size, batch, args)
        fixed, per_volume = fit_memory(runs)
        speed = runs[max(runs)]["volumes_per_second"]
        rows.append(Row(depth, size, runs, fixed, per_volume, speed, extrapolated=False))
    return rows


def print_table(rows: list[Row], batch_sizes: list[int], budget_gib: float) -> None:
    """Print one line per measured (depth, size, batch), and one per extrapolated (depth, size)."""
    budget = budget_gib * GIB
    print(
        f"{'depth':>5} {'size':>5} {'batch':>5} {'steps':>5} {'peak RSS GiB':>12} {'train GiB':>9} "
        f"{'GiB/volume':>10} {'volumes/s':>9} {f'largest batch in {budget_gib:g} GiB':>26}"
    )

    def line(row: Row, batch: int, steps: str, peak: str, training: str, speed: float) -> str:
        return (
            f"{row.depth:>5} {row.size:>5} {batch:>5} {steps:>5} {peak:>12} {training:>9} "
            f"{row.per_volume / GIB:>10.2f} {speed:>9.2f} {row.largest_batch(budget):>26}"
        )

    for row in rows:
        if row.extrapolated:
            batch = max(batch_sizes)
            peak = f"{row.predicted_peak(batch) / GIB:.2f}*"
            print(line(row, batch, "-", peak, "-", row.volumes_per_second) + "  * extrapolated, not run")
            continue
        for batch, run in sorted(row.runs.items()):
            peak, training = f"{run['peak'] / GIB:.2f}", f"{run['training'] / GIB:.2f}"
            print(line(row, batch, str(run["steps"]), peak, training, run["volumes_per_second"]))


def print_fits(rows: list[Row], budget_gib: float) -> None:
    """Print which (depth, size) fit paper 002's batch sizes in the budget, by the linear model."""
    for batch in PAPER_BATCHES:
        fits = [row for row in rows if row.predicted_peak(batch) <= budget_gib * GIB]
        names = ", ".join(f"{row.depth}x{row.size}x{row.size}" for row in fits) or "none"
        most = max((row.voxels for row in fits), default=0)
        largest = " and ".join(f"depth {row.depth} at {row.size} px" for row in fits if row.voxels == most)
        summary = f"; largest: {largest}" if fits else ""
        print(f"batch {batch:>2} fits {budget_gib:g} GiB: {names}{summary}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", type=int, nargs="+", default=[4, 16, 64])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4], help="one or two batch sizes")
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--max-gib", type=float, default=12, help="extrapolate, not run, above this peak")
    parser.add_argument("--budget-gib", type=float, default=24, help="memory for the 'largest batch' column")
    parser.add_argument("--step-seconds", type=float, default=60, help="fewer timed steps beyond this time")
    parser.add_argument("--measure", type=int, nargs=3, metavar=("DEPTH", "SIZE", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        depth, size, batch = args.measure
        print(json.dumps(measure(depth, size, batch, args.steps, args.threads, args.step_seconds)))
        return
    if not 1 <= len(args.batch) <= 2:
        parser.error("--batch takes one or two batch sizes")
    print(
        f"{MODEL}, {CHANNELS} channels, Adam lr 1e-3, cross-entropy on random volumes; torch {torch.__version__}, "
        f"{args.threads} threads, CPU {cpu_model()} ({os.cpu_count()} cores)"
    )
    start = time.perf_counter()
    rows = run_all(args)
    print()
    print_table(rows, args.batch, args.budget_gib)
    print("GiB/volume: slope of peak RSS in batch; train GiB: peak minus RSS with the model built, before step 1.")
    print("largest batch: linear in batch from the fixed part and GiB/volume.")
    print_fits(rows, args.budget_gib)
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
