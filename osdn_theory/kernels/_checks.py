"""Argument checks shared by :func:`chunk_osdn` and :func:`d_ratio_scan` (each raises ``ValueError`` naming the
argument, what was expected and what was received)."""

from __future__ import annotations

import torch

from .._validate import ValueCheckError, as_tensor, check_range, check_scalar, check_shape
from . import _common  # INTERPRET and the BAD_* bits

CHUNK_SIZES = (16, 32, 64)
MAX_DIM = 256


def check_keys(k) -> torch.Tensor:
    """``k`` of shape ``[B, T, H, K]``: a contiguous floating tensor on a CUDA device (or on the CPU under the
    Triton interpreter, where float64 is allowed too), ``T ≥ 1``, ``1 ≤ K ≤ 256``."""
    k = as_tensor("k", k)
    check_shape("k", k, [None, None, None, None], "[B, T, H, K]")
    B, T, H, K = k.shape
    if T == 0:
        raise ValueError("k: expected at least one token (T >= 1), got T = 0")
    if k.dtype == torch.float64 and not _common.INTERPRET:
        raise ValueError(
            "k: float64 runs only under the Triton interpreter (TRITON_INTERPRET=1); got float64"
        )
    if k.dtype == torch.bfloat16 and _common.INTERPRET:
        # numpy has no bfloat16: with Triton 3.8 the interpreter's tl.dot on bf16 operands returned values off
        # by many orders of magnitude on a single 16x16 product, so the kernels would run and return nonsense.
        raise ValueError(
            "k: bfloat16 is not supported under the Triton interpreter (its tl.dot is wrong for bf16 operands); "
            "expected float16, float32 or float64 there, got bfloat16"
        )
    devices = ("cuda", "cpu") if _common.INTERPRET else ("cuda",)
    if k.device.type not in devices:
        raise ValueError(
            f"k: expected a tensor on {' or '.join(devices)} "
            f"({'CPU only under the Triton interpreter' if _common.INTERPRET else 'or set TRITON_INTERPRET=1'}), "
            f"got device {k.device}"
        )
    if not 1 <= K <= MAX_DIM:
        raise ValueError(f"k: expected head dim 1 <= K <= {MAX_DIM}, got K = {K}")
    if not k.is_contiguous():
        raise ValueError(f"k: expected a contiguous tensor (call .contiguous()), got strides {k.stride()}")
    return k


def check_like(
    name: str, x, ref: torch.Tensor, shape, layout: str, *, contiguous: bool = True
) -> torch.Tensor:
    """``x`` with shape ``shape`` (``None`` = any) and the dtype and device of ``ref`` (the keys)."""
    t = as_tensor(name, x)
    check_shape(name, t, shape, layout)
    if t.dtype != ref.dtype:
        raise ValueError(f"{name}: expected dtype {ref.dtype} (same as k), got {t.dtype}")
    if t.device != ref.device:
        raise ValueError(f"{name}: expected device {ref.device} (same as k), got {t.device}")
    if contiguous and not t.is_contiguous():
        raise ValueError(
            f"{name}: expected a contiguous tensor (call .contiguous()), got strides {t.stride()}"
        )
    return t


def check_chunk_size(chunk_size) -> int:
    C = int(check_scalar("chunk_size", chunk_size, integer=True))
    if C not in CHUNK_SIZES:
        raise ValueError(f"chunk_size: expected one of {CHUNK_SIZES}, got {chunk_size!r}")
    return C


def check_cu_seqlens(cu_seqlens, B: int, T: int, device) -> tuple[torch.Tensor | None, int]:
    """``cu_seqlens`` (``None`` or an integer tensor ``[N + 1]`` rising strictly from 0 to ``T``, with ``B = 1``),
    moved to ``device``; returns it and the number of sequences ``N``."""
    if cu_seqlens is None:
        return None, B
    if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"cu_seqlens: expected an int32/int64 tensor, got {cu_seqlens!r}")
    if B != 1:
        raise ValueError(f"cu_seqlens: expected B = 1 (packed sequences), got B = {B}")
    if cu_seqlens.ndim != 1 or cu_seqlens.numel() < 2:
        raise ValueError(f"cu_seqlens: expected shape [N + 1] with N >= 1, got {tuple(cu_seqlens.shape)}")
    cu_list = cu_seqlens.tolist()
    if cu_list[0] != 0 or cu_list[-1] != T or any(b <= a for a, b in zip(cu_list, cu_list[1:], strict=False)):
        raise ValueError(f"cu_seqlens: expected strictly increasing from 0 to T = {T}, got {cu_list}")
    return cu_seqlens.to(device), len(cu_list) - 1


# ------------------------------------------------------------------------------ value checks without a sync

#: The value-check bits (set by the stages as they load each input, see :mod:`._common`), in report order,
#: with the range each argument must lie in (for the message) and the interval for :func:`check_range`.
VALUE_CHECKS = (
    ("q", _common.BAD_Q.value, "finite values", (None, None, False)),
    ("k", _common.BAD_K.value, "finite values", (None, None, False)),
    ("v", _common.BAD_V.value, "finite values", (None, None, False)),
    ("beta", _common.BAD_BETA.value, "values in (0, 1]", (0.0, 1.0, True)),
    ("alpha", _common.BAD_ALPHA.value, "values in (0, 1]", (0.0, 1.0, True)),
    ("d", _common.BAD_D.value, "finite values > 0", (0.0, None, True)),
)

#: Per CUDA device: the persistent flag word that the default calls' kernels OR their bits into, and the pinned
#: host word that each call refreshes with an asynchronous copy (read by :func:`poll`, no synchronisation).
_STICKY: dict = {}


def check_validate(validate) -> bool | str:
    """``validate``: ``True`` (device-side checks, reported without a host sync), ``"sync"`` (the same checks,
    reported at the call with one host synchronisation) or ``False``."""
    if isinstance(validate, bool) or (isinstance(validate, str) and validate == "sync"):
        return validate
    raise ValueError(f"validate: expected True, False or 'sync', got {type(validate).__name__} {validate!r}")


def _sticky(device: torch.device):
    st = _STICKY.get(device)
    if st is None:
        st = _STICKY[device] = [
            torch.zeros(1, dtype=torch.int32, device=device),
            torch.zeros(1, dtype=torch.int32, pin_memory=True),
        ]
    return st


def new_flag(validate, device) -> torch.Tensor | None:
    """The int32 flag word the stages OR their value-check bits into, or ``None`` without checks: a fresh zero
    word on the CPU and with ``"sync"``; on a GPU by default the device's persistent word (no allocation, no
    fill per call; it is cleared when its bits are reported)."""
    if not validate:
        return None
    if device.type == "cuda" and validate != "sync":
        return _sticky(device)[0]
    return torch.zeros(1, dtype=torch.int32, device=device)


def _message(bits: int, op: str, tensors: dict | None) -> str:
    """The message for the first flagged argument: with the tensors at hand (CPU, ``"sync"``), the detailed
    message of :func:`check_range` (min, max); otherwise what was expected."""
    for name, bit, expected, (lo, hi, lo_open) in VALUE_CHECKS:
        if not bits & bit:
            continue
        t = None if tensors is None else tensors.get(name)
        if t is not None:
            try:
                check_range(name, t.detach(), lo, hi, lo_open=lo_open)
            except ValueError as e:
                return str(e)
        return (
            f"{name}: expected {expected}, got values outside that range (found by the device-side value check "
            f"of an earlier {op} call; outputs were NaN until this report; validate='sync' reports at the call)"
        )
    return f"{op}: a value check failed (bits {bits:#x})"


def report(flag: torch.Tensor | None, op: str, tensors: dict | None, sync: bool) -> None:
    """Raise ``ValueError`` now if ``flag`` is set and reading it costs no host synchronisation (CPU, the
    Triton interpreter) or ``sync`` is asked for. On a GPU otherwise (the persistent word) queue an
    asynchronous copy of the word into the device's pinned host word, which :func:`poll` reads at later calls."""
    if flag is None:
        return
    if flag.device.type != "cuda" or sync:
        bits = int(flag.item())
        if bits:
            raise ValueCheckError(_message(bits, op, tensors))
        return
    _STICKY[flag.device][1].copy_(flag, non_blocking=True)


def _raise_and_clear(device, bits: int) -> None:
    """Clear the device's word (a fill queued on the stream, after the kernels that set it) and start a new
    pinned host word (copies still in flight write the old one), then raise for ``bits``."""
    word = _STICKY[device][0]
    word.zero_()
    _STICKY[device][1] = torch.zeros(1, dtype=torch.int32, pin_memory=word.is_cuda)
    raise ValueCheckError(_message(bits, "chunk_osdn / d_ratio_scan", None))


def poll() -> None:
    """Raise ``ValueError`` (naming the argument) if a value check of an earlier call has reported a bad value
    to the host; a check still running is reported by a later call (reading pinned memory: no sync)."""
    for device, (_, host) in list(_STICKY.items()):
        bits = int(host[0])
        if bits:
            _raise_and_clear(device, bits)


def check_values() -> None:
    """Wait for the value checks of all earlier ``chunk_osdn`` / ``d_ratio_scan`` calls and raise
    ``ValueError`` (naming the argument) if one found a bad value. This synchronises with the GPU; call it
    where a sync happens anyway (after a training step, before logging)."""
    for device, (word, _) in list(_STICKY.items()):
        bits = int(word.item())
        if bits:
            _raise_and_clear(device, bits)


def discard_values() -> str | None:
    """Wait for the value checks of all earlier calls, clear what they flagged and return its message (``None``
    when nothing was flagged) instead of raising. For a loop that has already stopped a run whose values went
    non-finite (a diverged training run): what that run flagged must not be reported by the next run's
    first call in the same process."""
    try:
        check_values()
    except ValueCheckError as e:
        return str(e)
    return None
