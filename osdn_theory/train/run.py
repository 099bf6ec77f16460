"""Train one recall run and evaluate it: the task that ``osdn train`` hands to the sweep executors.

A run (see :mod:`.spec`) builds :class:`osdn_theory.layers.RecallLM` (``torch.manual_seed(seed)`` first), then
for ``train.steps`` steps draws a fresh batch of ``train.batch_size`` sequences from the seed stream
``(seed, 0, step)``, and takes one AdamW step on the cross-entropy of the answer tokens (linear warm-up, then
cosine decay to ``min_lr_ratio · lr``; gradient-norm clip). Every ``eval_every`` steps and at the end it
scores ``metrics.eval_examples`` held-out sequences from the disjoint stream ``(seed, 1)`` (the same for
every model of a seed, so models are compared on the same questions).

Record (one per run, appended to ``results.jsonl`` by the sweep runner):

- ``metrics``: ``accuracy`` (held-out answer tokens predicted exactly, at the end), ``eval_loss``,
  ``r1_layer0, …`` and ``r1_mean`` (:func:`layer_r1`: each trained OSDN layer's own stored-set residual ratio
  over the context of ``batch_size`` held-out sequences; not for peer models),
  ``s_median_layer0``, ``s_over2_layer0``, … (:func:`layer_write_strength`: each OSDN layer's median write
  strength and the fraction of tokens outside the contraction range, on held-out sequences),
  ``train_loss`` (mean of the last ``log_every`` steps), ``best_accuracy``, ``accuracy_overwritten`` /
  ``accuracy_kept`` (forgetting task), ``n_params``, ``steps``, ``train_seconds``, ``steps_per_s``,
  ``peak_memory_gb`` (GPU).
- ``series``: ``eval_step``, ``eval_accuracy``, ``eval_loss``, ``eval_s_over2``, ``eval_s_median`` (OSDN
  models); ``loss_step``, ``loss``.
- ``status``: ``ok``; ``diverged`` (the training loss became NaN or infinite, or the kernel's value check found
  non-finite activations; training stopped there, ``metrics.diverged_reason`` says which);
  ``failed`` (raised; traceback kept); ``skipped`` (a peer model whose package is not installed; like a failed
  run it is run again by ``--retry-failed``, since only ``ok``/``diverged`` count as finished).

Checkpoints (``checkpoint_dir``, which ``osdn train`` sets to ``DIR/checkpoints``): every ``checkpoint_every``
seconds of training, a run saves its state (model, optimizer, step, the series so far) to
``<config hash>.pt`` (written to a temporary file, then renamed), and a run that finds its checkpoint resumes
from it instead of from step 0; the file is removed when the run ends. Batches are a function of the step and
the state is restored exactly, so on a CPU a resumed run equals an uninterrupted one bit for bit (tested; on
a GPU this is not tested). A checkpoint that cannot be read is set aside
(renamed ``.bad``) and the run starts over; so does a run that failed (its checkpoint is removed with the
failure, so that ``--retry-failed`` after a fix does not resume from a faulty state). A SIGINT or SIGTERM
during a checkpointed run saves a checkpoint at the end of the current step before the run stops, so an
interrupted run loses no training (a second Ctrl-C stops at once; a repeated SIGTERM is ignored).
"""

from __future__ import annotations

import math
import os
import signal
import socket
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .._validate import ValueCheckError
from ..layers import PeerUnavailable, RecallLM, model_from_dict
from ..sweeps.spec import config_hash
from ..sweeps.store import utc_now
from ..tasks import IGNORE, task_from_dict
from .spec import eval_settings, optim_settings, run_label, train_settings

__all__ = ["evaluate_model", "layer_r1", "lr_at", "pick_device", "train_batch", "train_run"]


def pick_device(device: str = "auto") -> torch.device:
    """``"auto"``: a CUDA device when one exists (worker processes spread over several by process id), else
    the CPU; otherwise ``torch.device(device)``."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", os.getpid() % torch.cuda.device_count())
        return torch.device("cpu")
    return torch.device(device)


def lr_at(step: int, optim: dict, steps: int) -> float:
    """Learning rate of ``step`` (0-based): linear warm-up over ``warmup_steps``, then constant or cosine decay
    from ``lr`` to ``min_lr_ratio · lr`` at the last step."""
    lr, warm = optim["lr"], optim["warmup_steps"]
    if step < warm:
        return lr * (step + 1) / warm
    if optim["schedule"] == "constant":
        return lr
    frac = (step - warm) / max(1, steps - warm - 1)
    lo = optim["min_lr_ratio"] * lr
    return lo + 0.5 * (lr - lo) * (1.0 + math.cos(math.pi * min(1.0, frac)))


def _answer_logits(model, inputs: torch.Tensor, labels: torch.Tensor):
    """Logits ``[n, vocab]`` of the ``n`` answer positions (``labels != IGNORE``) and their labels ``[n]``. A
    :class:`RecallLM` projects only those positions onto the vocabulary; another model's full logits are
    indexed (the same values)."""
    mask = labels != IGNORE
    if isinstance(model, RecallLM):
        return model(inputs, positions=mask), labels[mask]
    return model(inputs)[mask], labels[mask]


def train_step(model, opt, batch, device, precision: str = "fp32", grad_clip: float = 0.0):
    """One training step of :func:`train_run` on ``batch`` (a :class:`~osdn_theory.tasks.RecallBatch` on
    ``device``): the answer positions' loss, one host read of it, and, when it is finite, backward, the
    gradient-norm clip (``grad_clip > 0``) and ``opt.step()``. Returns ``(loss, reason)``: ``reason`` is the
    kernel value check's message when it found non-finite activations (the loss is then NaN), else ``None``.
    ``benchmarks/bench_train.py`` times this call."""
    try:
        with _autocast(device, precision):
            logits, answers = _answer_logits(model, batch.inputs, batch.labels)
        loss = _answer_loss(logits, answers)
        value = float(loss.detach())  # one host sync per step: stops a diverged run at once
    except ValueCheckError as e:  # the kernel's value check saw the activations go non-finite
        return float("nan"), str(e)
    if not math.isfinite(value):
        return value, None
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    return value, None


def _answer_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the answer positions (``labels != IGNORE``); ``logits [..., vocab]``."""
    return F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE
    )


def _autocast(device: torch.device, precision: str):
    if precision == "bf16" and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


@torch.no_grad()
def evaluate_model(model, task, seed: int, n: int, batch_size: int, device, precision: str = "fp32") -> dict:
    """Held-out accuracy and loss on ``n`` sequences of ``task`` from the seed stream ``(seed, 1)``."""
    import dataclasses

    model.eval()
    data = dataclasses.replace(task, num_examples=n).build((seed, 1))
    correct = total = 0
    loss_sum = 0.0
    ow_c = ow_n = 0
    for i in range(0, n, batch_size):
        x = data.inputs[i : i + batch_size].to(device)
        y = data.labels[i : i + batch_size].to(device)
        with _autocast(device, precision):
            logits, ya = _answer_logits(model, x, y)
        hit = logits.argmax(-1) == ya
        correct += int(hit.sum())
        total += int(ya.numel())
        loss_sum += float(_answer_loss(logits, ya)) * int(ya.numel())
        if data.overwritten is not None:
            ow = data.overwritten[i : i + batch_size].to(device)[y != IGNORE]
            ow_c += int((hit & ow).sum())
            ow_n += int(ow.sum())
    model.train()
    out = {"accuracy": correct / total, "eval_loss": loss_sum / total}
    if data.overwritten is not None:
        out["accuracy_overwritten"] = ow_c / ow_n if ow_n else float("nan")
        out["accuracy_kept"] = (correct - ow_c) / (total - ow_n) if total > ow_n else float("nan")
    return out


@torch.no_grad()
def layer_r1(model, inputs: torch.Tensor, context_len: int) -> list[float]:
    """R1 (spec §9, stored-set residual ratio) of each OSDN layer's own memory after the context.

    For layer ``l``, with its trained projections' keys ``k_i``, values ``v_i``, strengths ``β_i`` and ``d_i``
    on the context tokens ``i < context_len`` of ``inputs [B, T]``, the memory ``S`` written by them (float64
    token recurrence, the layer's ``d_mode``) gives ``R1 = Σ_i ‖S k_i − v_i‖² / Σ_i ‖v_i‖²`` per sequence and
    head; returned is its mean over both, per layer (empty for peer models). The stored set is every context
    token, so ``R1`` also counts what later writes overwrote; compare it between models, not with 0.
    """
    from ..recurrences import osdn_recurrent

    out = []
    for mix, q, k, v, beta, d in _layer_features(model, inputs, context_len):
        _, S = osdn_recurrent(q, k, v, beta, d, output_final_state=True, s_max=mix.s_max)  # S: [B, H, K, V]
        res = torch.einsum("bhkv,bthk->bthv", S, k) - v
        r1 = res.square().sum((1, 3)) / v.square().sum((1, 3)).clamp_min(1e-300)
        out.append(float(r1.mean()))
    return out


def _layer_features(model, inputs: torch.Tensor, length: int | None = None):
    """Per OSDN layer of ``model`` (none for peer models): ``(mixer, q, k, v, β, d)`` of ``inputs [B, T]``
    (the first ``length`` tokens) in float64, ``d`` the layer's own (the ratio rule's, learned, or ``None``)."""
    from ..layers import ratio_rule_d

    if model.config.kind != "osdn":
        return
    x = model.embed(inputs)
    for blk in model.blocks:
        mix = blk.mixer
        q, k, v, beta, d = (t if t is None else t[:, :length].double() for t in mix.features(blk.norm1(x)))
        if mix.d_mode == "rule":
            d = ratio_rule_d(k, beta, mix.rule_c, 1.0, mix.rule_d_min)
        yield mix, q, k, v, beta, d
        x = blk(x)


@torch.no_grad()
def layer_write_strength(model, inputs: torch.Tensor) -> list[dict[str, float]]:
    """Each OSDN layer's write strengths ``s_t = β_t k_tᵀ(d_t ⊙ k_t)`` on ``inputs [B, T]`` (every token),
    in float64 with the layer's ``d`` (ratio rule, learned, or 1) and clip (``min(s, s_max)``):
    ``{"median": …, "over2": …}``, the median and the fraction above 2 (outside C4's contraction range
    ``0 < s < 2``). DeltaNet's ``s`` is ``β ≤ 1``. Empty for peer models. Recorded at every evaluation of a
    run (``series.eval_s_over2``, ``series.eval_s_median``: the largest fraction and median over the layers)
    and at the end (``s_over2_layer0``, ``s_median_layer0``, …), so a diverging run shows where it went."""
    out = []
    for mix, _, k, _, beta, d in _layer_features(model, inputs):
        s = beta * (k * k * (d if d is not None else 1.0)).sum(-1)
        if mix.s_max is not None:
            s = s.clamp_max(mix.s_max)
        out.append({"median": float(s.median()), "over2": float((s > 2).double().mean())})
    return out


def _check_runnable(model_cfg, device: torch.device) -> None:
    if model_cfg.kind == "osdn" and model_cfg.mode == "chunk" and device.type == "cpu":
        if os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError(
                "model.mode: 'chunk' runs the Triton kernel, which needs a CUDA device (or TRITON_INTERPRET=1, "
                "tiny sizes only); use mode = 'reference' for CPU smoke runs"
            )


def _discard_value_checks() -> str | None:
    """Clear the kernels' pending value checks (if the kernel package is loaded) and return what they flagged.

    On a GPU the checks of ``chunk_osdn`` are reported by a *later* call, so the non-finite activations of a
    diverged run would otherwise fail the first step of the next run in the same worker process."""
    import sys

    checks = sys.modules.get("osdn_theory.kernels._checks")
    return checks.discard_values() if checks is not None else None


#: What a checkpoint keeps of the training loop besides the model and optimizer state.
_LOOP_KEYS = frozenset({"done", "seconds", "window", "best", "series", "last_eval"})


def _load_checkpoint(path, model, opt) -> dict | None:
    """The saved loop state of ``path`` after loading its model and optimizer state, or ``None`` (no file, or
    a file that cannot be read: renamed ``.bad`` and reported on stderr)."""
    import sys

    if path is None or not path.exists():
        return None
    import copy

    fresh = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    try:
        ck = torch.load(path, map_location="cpu", weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        loop = ck["loop"]
        if missing := _LOOP_KEYS - set(loop):
            raise KeyError(f"loop state lacks {sorted(missing)}")
        return loop
    except Exception as err:  # noqa: BLE001 - a damaged checkpoint costs the progress, never the run
        model.load_state_dict(fresh[0])  # undo a partial load: the run starts from its initial state
        opt.load_state_dict(fresh[1])
        bad = path.with_suffix(".bad")
        os.replace(path, bad)
        print(
            f"warning: checkpoint {path} unreadable ({type(err).__name__}: {err}); moved to {bad}, run restarts",
            file=sys.stderr,
        )
        return None


class _StopAtStepEnd:
    """While a checkpointed run trains: SIGINT (Ctrl-C, ``timeout -s INT``) and SIGTERM (a pool worker being
    stopped) ask the loop to finish its step, save a checkpoint and then stop, so that an interrupted run loses
    no training instead of up to ``checkpoint_every`` seconds of it. A second SIGINT acts at once (a step
    stuck in compilation can still be interrupted); a second SIGTERM does not: once one worker of a stopped
    pool has saved and exited, ``concurrent.futures`` calls the pool broken and sends SIGTERM to every other
    worker again, which stopped a run still in its step before it saved (seen in CI). SIGKILL stops at once.
    After the save, SIGINT raises ``KeyboardInterrupt`` and SIGTERM ends the process as SIGTERM does. Handlers
    are only installed in the main thread (Python allows no other), not for a signal the process ignores, and
    are restored on exit."""

    _SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, active: bool):
        self.active = active and threading.current_thread() is threading.main_thread()
        self.requested: int | None = None
        self._old: dict = {}

    def __enter__(self):
        if self.active:
            for sig in self._SIGNALS:
                if signal.getsignal(sig) is not signal.SIG_IGN:  # an ignored signal stays ignored
                    self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self._restore()
        if exc_type is None and self.requested is not None:  # asked during a step that ended the loop
            self._stop(self.requested)

    def _restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}

    def _handle(self, signum, frame) -> None:
        if self.requested is not None:
            if signum == signal.SIGINT:  # Ctrl-C twice: stop now, without the save
                self._restore()
                self._stop(signum)
            return  # SIGTERM again: already stopping (a process pool resends it, see the class docstring)
        self.requested = signum

    def stop_if_requested(self) -> None:
        """Called after the checkpoint was saved: stop the way the signal asked."""
        if self.requested is not None:
            self._restore()
            self._stop(self.requested)

    @staticmethod
    def _stop(signum: int) -> None:
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def _save_checkpoint(path, model, opt, loop: dict) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "loop": loop}, tmp)
    os.replace(tmp, path)


def train_run(
    cfg: dict,
    device: str | torch.device = "auto",
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: float = 60.0,
) -> tuple[str, dict, dict]:
    """Train and evaluate one run config; returns ``(status, metrics, series)`` (raises on errors). With
    ``checkpoint_dir``: resume from this run's checkpoint there, and save one every ``checkpoint_every``
    seconds of training (``0``: after every step); see the module docstring."""
    import copy
    import dataclasses

    if (
        not isinstance(checkpoint_every, int | float)
        or isinstance(checkpoint_every, bool)
        or not (checkpoint_every >= 0 and math.isfinite(checkpoint_every))
    ):
        raise ValueError(f"checkpoint_every: expected seconds >= 0, got {checkpoint_every!r}")

    dev = pick_device(device) if isinstance(device, str) else device
    model_cfg = model_from_dict(cfg["model"])
    task = task_from_dict(cfg["task"])
    optim = optim_settings(cfg["optim"])
    tr = train_settings(cfg["train"])
    ev = eval_settings(cfg["metrics"])
    seed = int(cfg["seed"])
    _check_runnable(model_cfg, dev)
    torch.manual_seed(seed)
    model = RecallLM(task.vocab_size, model_cfg).to(dev)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": optim["weight_decay"]}, {"params": rest, "weight_decay": 0.0}],
        lr=optim["lr"],
        betas=(optim["beta1"], optim["beta2"]),
    )
    steps, bs = tr["steps"], tr["batch_size"]
    train_task = dataclasses.replace(task, num_examples=bs)
    series: dict[str, list[Any]] = {
        "eval_step": [],
        "eval_accuracy": [],
        "eval_loss": [],
        "loss_step": [],
        "loss": [],
    }
    probe = (
        dataclasses.replace(task, num_examples=min(bs, ev["eval_examples"])).build((seed, 1)).inputs.to(dev)
    )
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    status, window, best = "ok", [], 0.0
    last_eval: dict = {}

    def evaluate(step: int) -> None:
        nonlocal last_eval, best
        last_eval = evaluate_model(model, task, seed, ev["eval_examples"], bs, dev, tr["precision"])
        series["eval_step"].append(step)
        series["eval_accuracy"].append(last_eval["accuracy"])
        series["eval_loss"].append(last_eval["eval_loss"])
        best = max(best, last_eval["accuracy"])
        model.eval()
        ws = layer_write_strength(model, probe)
        model.train()
        if ws:
            series.setdefault("eval_s_over2", []).append(max(w["over2"] for w in ws))
            series.setdefault("eval_s_median", []).append(max(w["median"] for w in ws))
            last_eval.update({f"s_{k}_layer{i}": w[k] for i, w in enumerate(ws) for k in ("median", "over2")})

    _discard_value_checks()  # what an earlier run of this process flagged is not this run's error
    reason = None
    done, before = 0, 0.0  # steps done and training seconds spent in earlier sessions (a resumed run)
    ck_path = None
    if checkpoint_dir is not None:
        Path(checkpoint_dir).mkdir(parents=True, exist_ok=True)
        ck_path = Path(checkpoint_dir) / f"{config_hash(cfg)}.pt"
    saved = _load_checkpoint(ck_path, model, opt)
    resumed = None
    if saved is not None:
        done, before, window, best = saved["done"], saved["seconds"], saved["window"], saved["best"]
        series, last_eval, resumed = saved["series"], saved["last_eval"], saved["done"]
    t0 = time.perf_counter()
    last_save = t0
    with _StopAtStepEnd(ck_path is not None) as stop:
        for step in range(done, steps):
            batch = train_task.build((seed, 0, step)).to(dev)
            for g in opt.param_groups:
                g["lr"] = lr_at(step, optim, steps)
            value, reason = train_step(model, opt, batch, dev, tr["precision"], optim["grad_clip"])
            if not math.isfinite(value):
                status = "diverged"
                reason = reason or _discard_value_checks() or f"training loss {value} at step {step + 1}"
                series["loss_step"].append(step + 1)
                series["loss"].append(value)
                break
            done = step + 1
            window.append(value)
            if done % tr["log_every"] == 0 or done == steps:
                series["loss_step"].append(done)
                series["loss"].append(sum(window) / len(window))
                window = []
            if tr["eval_every"] and done % tr["eval_every"] == 0 and done != steps:
                evaluate(done)
            now = time.perf_counter()
            periodic = done < steps and now - last_save >= checkpoint_every
            if ck_path is not None and (periodic or stop.requested is not None):  # after the last step too
                state = {"done": done, "seconds": before + now - t0, "window": list(window), "best": best}
                state.update(series=copy.deepcopy(series), last_eval=dict(last_eval))
                _save_checkpoint(ck_path, model, opt, state)
                last_save = time.perf_counter()
            stop.stop_if_requested()
    seconds = before + time.perf_counter() - t0
    r1: list[float] = []
    if status == "ok":
        evaluate(done)
        held = dataclasses.replace(task, num_examples=min(bs, ev["eval_examples"])).build((seed, 1))
        model.eval()
        r1 = layer_r1(model, held.inputs.to(dev), held.context_len)
        model.train()
    metrics: dict[str, Any] = {
        **last_eval,
        "best_accuracy": best,
        **({"r1_mean": sum(r1) / len(r1)} if r1 else {}),
        **{f"r1_layer{i}": x for i, x in enumerate(r1)},
        "train_loss": series["loss"][-1] if series["loss"] else float("nan"),
        "n_params": sum(p.numel() for p in model.parameters()),
        "steps": done,
        "train_seconds": seconds,
        "steps_per_s": done / seconds if seconds > 0 else float("nan"),
        "device": str(dev),
        **({"diverged_reason": reason} if reason else {}),
    }
    if dev.type == "cuda":
        metrics["peak_memory_gb"] = torch.cuda.max_memory_allocated(dev) / 2**30
        metrics["device_name"] = torch.cuda.get_device_name(dev)
    if resumed is not None:
        metrics["resumed_from_step"] = resumed
    if ck_path is not None:
        ck_path.unlink(missing_ok=True)
    return status, metrics, series


def _record(cfg: dict, status: str, elapsed: float, **extra) -> dict:
    try:
        label = run_label(cfg)
    except Exception:  # noqa: BLE001 - a bad config still gets its record
        label = None
    return {
        "hash": config_hash(cfg),
        "label": label,
        "status": status,
        "config": cfg,
        "elapsed_s": elapsed,
        "batch_size": 1,
        "worker": f"{socket.gethostname()}:{os.getpid()}",
        "finished": utc_now(),
        **extra,
    }


def train_batch(
    run_dicts: list[dict],
    device: str = "auto",
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: float = 60.0,
) -> list[dict]:
    """Train each run config in turn → one record per run; never raises (see the module docstring).
    ``checkpoint_dir``, ``checkpoint_every``: see :func:`train_run`."""
    if not isinstance(run_dicts, list) or not run_dicts:
        raise ValueError(f"run_dicts: expected a non-empty list of run configs, got {run_dicts!r}")
    out = []
    for cfg in run_dicts:
        t0 = time.perf_counter()
        try:
            status, metrics, series = train_run(cfg, device, checkpoint_dir, checkpoint_every)
            out.append(_record(cfg, status, time.perf_counter() - t0, metrics=metrics, series=series))
        except PeerUnavailable as err:
            out.append(_record(cfg, "skipped", time.perf_counter() - t0, error=str(err)))
        except Exception as err:  # noqa: BLE001 - recorded, never lost
            if (
                checkpoint_dir is not None
            ):  # a retry (after a fix) starts over rather than from a faulty state
                (Path(checkpoint_dir) / f"{config_hash(cfg)}.pt").unlink(missing_ok=True)
            out.append(
                _record(
                    cfg,
                    "failed",
                    time.perf_counter() - t0,
                    error=f"{type(err).__name__}: {err}",
                    traceback=traceback.format_exc(),
                )
            )
    return out
