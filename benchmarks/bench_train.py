"""What one training step of the recall lab costs (``osdn train``'s tiny models), to size a GPU sweep.

Per model (DeltaNet, OSDN with the ratio rule, OSDN with learned d) and shape (width, pairs, sequence length),
in one process:

- ``build_ms``: drawing one batch on the host (:meth:`MQAR.build`, numpy);
- ``step_ms``: one training step, :func:`osdn_theory.train.run.train_step` (the call ``osdn train`` makes:
  forward with the logits of the answer positions only, loss and its host read, backward, AdamW; median over
  the timed steps);
- ``step_full_logits_ms``: the same step with the full ``[B·T, vocab]`` logits (how steps were taken before
  2026-12-05).

Then ``--workers`` processes run the first shape's DeltaNet step side by side (the local executor's way of
sharing one GPU): ``pool_steps_per_s`` is their summed rate, which says how many workers pay. They start timing
together once all are set up and compiled (a barrier; the former fixed wait of 20 s + 2 s a worker made the 12-
and 15-worker pools overrun a 230 s budget on an H100 on 2026-12-05).

    python -m benchmarks.bench_train [--out FILE] [--workers 1,4,8,12] [--steps 30]
    python -m benchmarks.bench_train --device cpu --tiny     # CPU smoke of the script (reference mode)
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import time
from pathlib import Path

import torch

from benchmarks._env import environment

SHAPES = [(64, 16, 256), (128, 16, 256), (128, 128, 512)]  # (hidden_size, num_kv_pairs, seq_len)
D_MODES = ["none", "rule", "learned"]


def _setup(d_mode, hidden, kv, seq_len, device, tiny):
    from osdn_theory.layers import RecallLM
    from osdn_theory.tasks import MQAR

    vocab, batch = (64, 4) if tiny else (8192, 64)
    task = MQAR(vocab_size=vocab, num_kv_pairs=kv, seq_len=seq_len, power_a=0.01, num_examples=batch)
    cfg = {
        "mode": "reference" if device.type == "cpu" else "chunk",
        "hidden_size": hidden,
        "num_layers": 2,
        "num_heads": 2,
        "d_mode": d_mode,
    }
    torch.manual_seed(0)
    model = RecallLM(vocab, cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return task, model, opt


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step_times(task, model, opt, device, steps, full_logits):
    """Median ms of a training step: :func:`osdn_theory.train.run.train_step` (what ``osdn train`` runs), or
    with ``full_logits`` the same step projecting every position onto the vocabulary."""
    from osdn_theory.train.run import _answer_loss, train_step

    def full_step(batch):
        loss = _answer_loss(model(batch.inputs), batch.labels)
        float(loss.detach())  # the loop's host read
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    times = []
    for i in range(steps + 3):  # 3 untimed steps: compilation, allocator
        batch = task.build((0, 0, i)).to(device)
        _sync(device)
        t0 = time.perf_counter()
        if full_logits:
            full_step(batch)
        else:
            train_step(model, opt, batch, device)
        _sync(device)
        if i >= 3:
            times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def bench_model(d_mode, hidden, kv, seq_len, device, steps, tiny) -> dict:
    task, model, opt = _setup(d_mode, hidden, kv, seq_len, device, tiny)
    t0 = time.perf_counter()
    for i in range(5):
        task.build((0, 0, i))
    build_ms = 1e3 * (time.perf_counter() - t0) / 5
    return {
        "d_mode": d_mode,
        "hidden_size": hidden,
        "num_kv_pairs": kv,
        "seq_len": seq_len,
        "build_ms": build_ms,
        "step_ms": _step_times(task, model, opt, device, steps, full_logits=False),
        "step_full_logits_ms": _step_times(task, model, opt, device, steps, full_logits=True),
    }


_BARRIER = None


def _pool_init(barrier):
    global _BARRIER
    _BARRIER = barrier


def _pool_worker(args):
    hidden, kv, seq_len, device, steps, tiny = args
    device = torch.device(device)
    torch.set_num_threads(1)
    task, model, opt = _setup("none", hidden, kv, seq_len, device, tiny)
    _step_times(task, model, opt, device, 2, full_logits=False)  # compile before the common start
    _BARRIER.wait(timeout=600)  # every worker is set up and compiled: all start timing together
    t0 = time.perf_counter()
    _step_times(task, model, opt, device, steps, full_logits=False)
    return steps + 3, time.perf_counter() - t0


def bench_pool(workers, shape, device, steps, tiny) -> dict:
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(workers)
    with ctx.Pool(workers, initializer=_pool_init, initargs=(barrier,)) as pool:
        res = pool.map(_pool_worker, [(*shape, str(device), steps, tiny)] * workers)
    return {
        "workers": workers,
        "pool_steps_per_s": sum(n / s for n, s in res),
        "per_worker_steps_per_s": [n / s for n, s in res],
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="JSON file (a .md table is written beside it)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=30, help="timed steps per measurement")
    ap.add_argument("--workers", default="1,4,8,12", help="process counts for the shared-GPU measurement")
    ap.add_argument("--tiny", action="store_true", help="vocabulary 64, batch 4, tiny shapes (smoke)")
    a = ap.parse_args(argv)
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_train: needs a CUDA device (or --device cpu --tiny for a smoke run)")
    if device.type == "cpu" and not a.tiny:
        raise SystemExit(
            "bench_train: --device cpu runs only with --tiny (reference mode; not a measurement)"
        )
    if a.steps < 1:
        raise SystemExit(f"bench_train: --steps must be >= 1, got {a.steps}")
    try:
        workers = [int(w) for w in a.workers.split(",") if w.strip()]
    except ValueError:
        raise SystemExit(f"bench_train: --workers expects integers like 1,4,8, got {a.workers!r}") from None
    if not workers or min(workers) < 1:
        raise SystemExit(f"bench_train: --workers expects positive integers, got {a.workers!r}")
    shapes = [(16, 2, 16)] if a.tiny else SHAPES
    meta = environment()
    out = Path(a.out) if a.out else None
    rows, pools = [], []

    def save():
        if out is None:
            return
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"meta": meta, "rows": rows, "pool": pools}, indent=1))
        out.with_suffix(".md").write_text("\n".join(table()) + "\n")

    def table():
        lines = [
            f"{meta['cuda_device'] or meta['processor']}; torch {meta['torch']}, triton {meta['triton']}; "
            f"{meta['date']}; ms per training step (median), one process",
            "",
            "| model | width | pairs | T | build batch ms | step ms | step ms, full logits |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['d_mode']} | {r['hidden_size']} | {r['num_kv_pairs']} | {r['seq_len']} | {r['build_ms']:.1f} "
            f"| {r['step_ms']:.1f} | {r['step_full_logits_ms']:.1f} |"
            for r in rows
        ]
        if pools:
            lines += ["", "| workers sharing the device | summed steps/s |", "|---|---|"]
            lines += [f"| {p['workers']} | {p['pool_steps_per_s']:.1f} |" for p in pools]
        return lines

    print("\n".join(table()[:4]), flush=True)
    for shape in shapes:
        for d_mode in D_MODES:
            rows.append(bench_model(d_mode, *shape, device, a.steps, a.tiny))
            print(table()[-1], flush=True)
            save()
    for w in workers:
        pools.append(bench_pool(w, shapes[0], device, a.steps, a.tiny))
        print(f"{w} workers: {pools[-1]['pool_steps_per_s']:.1f} steps/s summed", flush=True)
        save()
    return rows, pools


if __name__ == "__main__":
    main()
