"""Cost of one lockstep round trip between the sampler process and W workers, per primitive.

The shared-memory sampler (trmrl/env_slots.py) wakes every worker and waits for all of them
once per env step. This measures that round trip with no work in between, for the cheap
primitives multiprocessing offers, so that the choice is a measured one:

* ``pipe``: one byte each way per worker (os.write / os.read on a Pipe's descriptors);
* ``semaphore``: a "go" semaphore per worker, one shared "done" semaphore (blocking waits);
* ``semaphore+timeout``: the same with 1 s timeouts, what the sampler uses so that a blocked
  side notices when the other died;
* ``barrier``: a multiprocessing Barrier crossed twice per step;
* ``event``: a "go" and a "done" Event per worker.

    python benchmarks/sync_primitives.py --workers 1 2 4 --work-us 0 200
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time

KINDS = ("pipe", "semaphore", "semaphore+timeout", "barrier", "event")


def _busy(us: float) -> None:
    end = time.perf_counter() + us * 1e-6
    while time.perf_counter() < end:
        pass


def _worker(kind: str, a, b, work_us: float) -> None:
    if kind == "pipe":
        read, write = a.fileno(), b.fileno()
        while True:
            os.read(read, 1)
            _busy(work_us)
            os.write(write, b"\x01")
    while True:
        if kind == "semaphore":
            a.acquire()
        elif kind == "semaphore+timeout":
            while not a.acquire(timeout=1.0):
                pass
        elif kind == "barrier":
            a.wait()
        elif kind == "event":
            a.wait()
            a.clear()
        _busy(work_us)
        if kind == "barrier":
            a.wait()
        elif kind == "event":
            b.set()
        else:
            b.release()


def round_trip_us(kind: str, workers: int, work_us: float, steps: int) -> float:
    """Microseconds per lockstep step (wake all, wait for all)."""
    context = mp.get_context("spawn")
    processes, sides = [], []
    done = context.Semaphore(0)
    barrier = context.Barrier(workers + 1)
    for _ in range(workers):
        if kind == "pipe":
            go_parent, go_child = context.Pipe()
            done_child, done_parent = context.Pipe()
            args, side = (go_child, done_child), (go_parent.fileno(), done_parent.fileno(),
                                                  go_parent, done_parent)
        elif kind.startswith("semaphore"):
            go = context.Semaphore(0)
            args, side = (go, done), go
        elif kind == "barrier":
            args, side = (barrier, None), None
        else:
            go, finished = context.Event(), context.Event()
            args, side = (go, finished), (go, finished)
        process = context.Process(target=_worker, args=(kind, *args, work_us), daemon=True)
        process.start()
        processes.append(process)
        sides.append(side)

    def step() -> None:
        if kind == "pipe":
            for write, _, *_ in sides:
                os.write(write, b"\x01")
            for _, read, *_ in sides:
                os.read(read, 1)
        elif kind.startswith("semaphore"):
            for go in sides:
                go.release()
            for _ in sides:
                if kind == "semaphore":
                    done.acquire()
                else:
                    while not done.acquire(timeout=1.0):
                        pass
        elif kind == "barrier":
            barrier.wait()
            barrier.wait()
        else:
            for go, _ in sides:
                go.set()
            for _, finished in sides:
                finished.wait()
                finished.clear()

    try:
        for _ in range(200):  # workers started and warm
            step()
        begin = time.perf_counter()
        for _ in range(steps):
            step()
        return (time.perf_counter() - begin) / steps * 1e6
    finally:
        for process in processes:
            process.kill()
            process.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--work-us", type=float, nargs="+", default=[0.0, 200.0],
                        help="busy work per worker per step")
    parser.add_argument("--steps", type=int, default=3000)
    args = parser.parse_args()
    print(f"# lockstep round trip, microseconds per step ({os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f})")
    print(f"{'workers':>7} {'work_us':>7} " + " ".join(f"{kind:>18}" for kind in KINDS))
    for workers in args.workers:
        for work_us in args.work_us:
            cells = [round_trip_us(kind, workers, work_us, args.steps) for kind in KINDS]
            print(f"{workers:>7} {work_us:>7.0f} " + " ".join(f"{c:>18.1f}" for c in cells),
                  flush=True)


if __name__ == "__main__":
    main()
