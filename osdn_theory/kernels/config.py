"""Launch configurations of the Triton stages, passed down explicitly with each call.

Each launcher takes a :class:`Launch` (default :data:`DEFAULT_LAUNCH`: every stage's own rule, documented at
the launcher); :func:`osdn_theory.kernels.chunk_osdn`, :func:`osdn_theory.kernels.d_ratio_scan` and
:meth:`osdn_theory.kernels.DRule.compute` accept one as ``launch=`` and hand it to every stage of that call.
There is no module-level switch: a configuration changes only the call it is passed to. The fields change
speed and at most the order of floating-point accumulation (results agree to rounding), except ``PREC`` and
``NEWTON`` of ``gram_solve`` (the solve's dot precision and its Newton step), which change the rounding of
16-bit calls only (float32 and float64 inputs always get IEEE dots) and which only the tuning benchmark sets.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from ._common import INTERPRET, acc_dtype

__all__ = [
    "AUTO_PASS_ABOVE_K",
    "D_CHECKS",
    "D_READOUTS",
    "STAGE_NAMES",
    "DEFAULT_LAUNCH",
    "Launch",
    "LaunchConfig",
    "check_launch",
]

#: Stage names, in pipeline order: forward, backward, then the d rule's kernels.
STAGE_NAMES = (
    "gram_solve",
    "wy",
    "state",
    "output",
    "dv_local",
    "dh",
    "bwd_dqk",
    "bwd_wy",
    "d_scan",
    "d_readout",
    "d_seg_map",
    "d_seg_carry",
    "d_bwd_local",
    "d_bwd_seg_map",
    "d_bwd_scan",
    "d_bwd_grads",
)

_PRECISIONS = ("ieee", "tf32", "tf32x3")

#: Where the default call checks ``d`` (finite, > 0): ``"auto"`` (default) is ``"pass"`` for head dims K > 64 and
#: ``"tile"`` otherwise (:meth:`Launch.d_check_for`; chosen from one H200 run, 2026-12-06, docs/kernels.md: the
#: default call over the unchecked one was 1.03 with the pass against 1.18 with the tile check at K = 128, where
#: stage 1's tile check spills, and 1.09 with the tile check against 1.23 with the pass at K = 64; on an H100 the
#: next day the pass changed nothing: 1.09-1.12 at five shapes either way, docs/kernels.md);
#: ``"tile"`` in stage 1, on the tile it loads for the write
#: key, reduced over each 16-row block; ``"rows"`` in stage 1, reduced over K per row and over the rows once at
#: the end; ``"pass"`` in a separate streaming kernel before stage 1 (one more read of ``d``); ``"atomic"`` in
#: stage 1, one predicated atomic per entry of the tile (issued only for a bad one), no reduction. Which costs
#: least is a GPU timing question (``benchmarks/bench_ours.py`` times all four); every one reports every bad value.
D_CHECKS = ("auto", "tile", "rows", "pass", "atomic")

#: ``"auto"`` checks ``d`` with a pass of its own above this head dim, in stage 1 (``"tile"``) at or below it.
AUTO_PASS_ABOVE_K = 64

#: How the d rule's scan writes ``d``: ``"fused"`` (default) in the sequential scan itself (an exclusive
#: cumulative sum over each chunk's rows and a ``C × K`` store on the sequential path); ``"separate"``: the
#: sequential scan stores only each chunk's entering state and the per-token coefficients, and a parallel
#: read-out (one program per chunk and head) writes ``d``. Same arithmetic, same values; only speed differs.
D_READOUTS = ("fused", "separate")


@dataclass(frozen=True)
class LaunchConfig:
    """Overrides of one stage's launch; ``None`` keeps the stage's own rule. ``BK``/``BV``: key/value block
    (powers of two ≥ 16), ``KSPLIT``: the state pass's state block in two halves over K, ``PREC``/``NEWTON``:
    dot precision and Newton step of the triangular solve (16-bit inputs only)."""

    num_warps: int | None = None
    num_stages: int | None = None
    BK: int | None = None
    BV: int | None = None
    KSPLIT: bool | None = None
    PREC: str | None = None
    NEWTON: bool | None = None

    def __post_init__(self):
        for name in ("num_warps", "num_stages", "BK", "BV"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise ValueError(f"{name}: expected a positive int or None, got {v!r}")
        for name in ("BK", "BV"):
            v = getattr(self, name)
            if v is not None and (v < 16 or v & (v - 1)):
                raise ValueError(f"{name}: expected a power of two >= 16 or None, got {v!r}")
        if self.PREC is not None and self.PREC not in _PRECISIONS:
            raise ValueError(f"PREC: expected one of {_PRECISIONS} or None, got {self.PREC!r}")
        for name in ("KSPLIT", "NEWTON"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, bool):
                raise ValueError(f"{name}: expected a bool or None, got {v!r}")

    def overrides(self) -> dict:
        """The fields that are set (not ``None``)."""
        # read the fields directly: dataclasses.asdict deep-copies and cost ~15 µs per launch, a few % of a
        # tiny model's training step (2026-12-05 profile), where every stage launch asks for its overrides
        return {f.name: v for f in _FIELDS if (v := getattr(self, f.name)) is not None}


_FIELDS = dataclasses.fields(LaunchConfig)


@dataclass(frozen=True)
class Launch:
    """The launch configuration of one call: a :class:`LaunchConfig` per stage (names in :data:`STAGE_NAMES`),
    the block rules to use, and optionally a dict the launchers record into.

    Attributes:
        gpu_rules: ``None`` (default): the GPU's block rules on a GPU, the interpreter's under the interpreter;
            ``True``/``False`` force one (the tests run the GPU's choices under the interpreter this way).
        record: a caller-owned dict; each launch writes ``record[name] = {"config": {…}, "regs_spills":
            (registers, spill bytes) or None}`` (registers only on a GPU). ``None``: nothing is recorded.
        d_check: where a checked call checks ``d`` (one of :data:`D_CHECKS`; default ``"auto"``, see
            :meth:`d_check_for`).
        rule_readout: how the d rule's scan writes ``d`` (one of :data:`D_READOUTS`; default ``"fused"``;
            the segment-parallel scan takes only ``"fused"``).
    """

    gram_solve: LaunchConfig = LaunchConfig()
    wy: LaunchConfig = LaunchConfig()
    state: LaunchConfig = LaunchConfig()
    output: LaunchConfig = LaunchConfig()
    dv_local: LaunchConfig = LaunchConfig()
    dh: LaunchConfig = LaunchConfig()
    bwd_dqk: LaunchConfig = LaunchConfig()
    bwd_wy: LaunchConfig = LaunchConfig()
    d_scan: LaunchConfig = LaunchConfig()
    d_readout: LaunchConfig = LaunchConfig()
    d_seg_map: LaunchConfig = LaunchConfig()
    d_seg_carry: LaunchConfig = LaunchConfig()
    d_bwd_local: LaunchConfig = LaunchConfig()
    d_bwd_seg_map: LaunchConfig = LaunchConfig()
    d_bwd_scan: LaunchConfig = LaunchConfig()
    d_bwd_grads: LaunchConfig = LaunchConfig()
    gpu_rules: bool | None = None
    record: dict | None = field(default=None, compare=False, hash=False, repr=False)
    d_check: str = "auto"
    rule_readout: str = "fused"

    def __post_init__(self):
        for name in STAGE_NAMES:
            if not isinstance(getattr(self, name), LaunchConfig):
                raise ValueError(f"{name}: expected a LaunchConfig, got {type(getattr(self, name)).__name__}")
        if self.gpu_rules is not None and not isinstance(self.gpu_rules, bool):
            raise ValueError(f"gpu_rules: expected a bool or None, got {self.gpu_rules!r}")
        if self.d_check not in D_CHECKS:
            raise ValueError(f"d_check: expected one of {D_CHECKS}, got {self.d_check!r}")
        if self.rule_readout not in D_READOUTS:
            raise ValueError(f"rule_readout: expected one of {D_READOUTS}, got {self.rule_readout!r}")

    def with_stage(self, name: str, cfg: LaunchConfig | dict) -> Launch:
        """A copy with stage ``name``'s configuration replaced (a dict is turned into a :class:`LaunchConfig`)."""
        if name not in STAGE_NAMES:
            raise ValueError(f"name: expected one of {STAGE_NAMES}, got {name!r}")
        return dataclasses.replace(
            self, **{name: cfg if isinstance(cfg, LaunchConfig) else LaunchConfig(**cfg)}
        )

    def d_check_for(self, K: int) -> str:
        """The placement of the ``d`` check for head dim ``K``: :attr:`d_check` itself, or for ``"auto"``
        ``"pass"`` when ``K > AUTO_PASS_ABOVE_K`` and ``"tile"`` otherwise (the same under the interpreter, so
        that the tests run what a GPU runs)."""
        if self.d_check != "auto":
            return self.d_check
        return "pass" if K > AUTO_PASS_ABOVE_K else "tile"

    def gpu(self) -> bool:
        """Whether the GPU's block rules apply."""
        return (not INTERPRET) if self.gpu_rules is None else self.gpu_rules

    def cfg(self, name: str, dtype: torch.dtype | None = None, **defaults) -> dict:
        """Keyword arguments of stage ``name``'s launch: ``defaults`` (the stage's rule) updated by this call's
        overrides (warps → 1 under the interpreter, which runs one thread per program). With ``dtype`` (the input
        dtype) it also carries the kernels' ``ACC`` (accumulator dtype) and ``IEEE`` (IEEE fp32 dots) constants."""
        cfg = {**defaults, **getattr(self, name).overrides()}
        if dtype is not None:
            cfg.update(ACC=acc_dtype(dtype), IEEE=dtype == torch.float32)
        if INTERPRET:
            cfg["num_warps"] = 1
        return cfg

    def note(self, name: str, compiled, cfg: dict) -> None:
        """Record the configuration a launch of ``name`` used, and its registers/spills when the compiled kernel
        reports them (GPU), into :attr:`record` (if set)."""
        if self.record is None:
            return
        n_regs, n_spills = getattr(compiled, "n_regs", None), getattr(compiled, "n_spills", None)
        self.record[name] = {
            "config": {k: v for k, v in cfg.items() if k != "ACC"},
            "regs_spills": (int(n_regs), int(n_spills)) if n_regs is not None else None,
        }


#: Every stage's own rule; what a call without ``launch=`` uses.
DEFAULT_LAUNCH = Launch()


def check_launch(launch) -> Launch:
    """``launch`` argument of the public calls: ``None`` (:data:`DEFAULT_LAUNCH`) or a :class:`Launch`."""
    if launch is None:
        return DEFAULT_LAUNCH
    if not isinstance(launch, Launch):
        raise ValueError(
            f"launch: expected an osdn_theory.kernels.config.Launch or None, got {type(launch).__name__}"
        )
    return launch
