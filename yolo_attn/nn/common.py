"""What the block families share besides attention: one vocabulary of argument checks, the CSP layout, precision.

Every check raises a ``ValueError`` that names the block, the argument and its value, and says what would work: a
YAML row with a wrong extra then fails with a message Ultralytics' row error can point at, never with an assert or an
arithmetic error deep inside a constructor.

Examples:
    >>> check_int("BoT3", "n", 2)
    2
    >>> hidden_width("CoAt3", 256, 0.5, high=1.0)
    128
    >>> resolve_heads("MHSA", 128, num_heads=4)
    (4, 32)
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import torch
from torch import nn

from yolo_attn._compat import Conv

__all__ = [
    "check_int",
    "check_number",
    "check_choice",
    "check_channels",
    "hidden_width",
    "resolve_heads",
    "AttnCSP",
    "fp16_safe",
    "compute_dtype",
    "no_autocast",
]


def check_int(block: str, name: str, value, low: int = 1, hint: str = "") -> int:
    """``value`` if it is an integer (not a bool) ``>= low``; otherwise a ValueError (``hint`` is appended)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{block}: {name}={value!r} must be an integer >= {low}{hint}")
    return value


def check_number(
    block: str,
    name: str,
    value,
    low: float = 0.0,
    high: float = math.inf,
    *,
    low_open: bool = False,
    high_open: bool = True,
    hint: str = "",
):
    """``value`` if it is a number (not a bool) in the interval; otherwise a ValueError naming the interval."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and (low < value if low_open else low <= value) and (value < high if high_open else value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{block}: {name}={value!r} is out of range; use a number in {interval}{hint}")
    return value


def check_choice(block: str, name: str, value, choices: Sequence):
    """``value`` if it is one of ``choices``; otherwise a ValueError listing them."""
    bool_mismatch = isinstance(value, bool) and not any(isinstance(c, bool) for c in choices)  # True == 1
    if bool_mismatch or isinstance(value, (list, dict, set)) or value not in choices:
        raise ValueError(f"{block}: {name}={value!r} is not one of {', '.join(map(repr, choices))}")
    return value


def check_channels(block: str, c1, c2) -> None:
    """Input and output channels are positive integers (a YAML width that scales to 0 fails here, naming it)."""
    check_int(block, "c1", c1, 1, " (input channels)")
    check_int(block, "c2", c2, 1, " (output channels; a YAML width that scales to 0 or less ends up here)")


def hidden_width(block: str, c2: int, e, high: float = math.inf) -> int:
    """``int(c2 * e)`` for a width ratio ``e`` in ``(0, high]``, at least one channel."""
    check_number(block, "e", e, 0.0, high, low_open=True, high_open=False, hint=" (the hidden width is int(c2 * e))")
    c_ = int(c2 * e)
    if c_ < 1:
        raise ValueError(f"{block}: int(c2 * e) = int({c2} * {e}) = 0 hidden channels; increase c2 or e")
    return c_


def resolve_heads(
    block: str, width: int, num_heads: int | None = None, dim_head: int | None = None, what: str = "c2"
) -> tuple[int, int]:
    """``(num_heads, dim_head)`` for an attention ``width`` from either one; a ValueError says which values divide it.

    Args:
        block: Block name for the message.
        width: Attention width in channels.
        num_heads: Heads (takes precedence when both are given).
        dim_head: Channels per head.
        what: How the width was derived, for the message (``"c2"``, ``"int(c2 * e) = int(256 * 0.5)"``).
    """
    if num_heads is None and dim_head is None:
        raise ValueError(f"{block}: give num_heads or dim_head")
    if num_heads is None:
        if isinstance(dim_head, bool) or not isinstance(dim_head, int) or dim_head < 1 or width % dim_head:
            valid = [d for d in (8, 16, 24, 32, 48, 64, 96, 128) if width % d == 0] or [1]
            raise ValueError(
                f"{block}: attention width {what} = {width} is not divisible by dim_head={dim_head!r}; heads are "
                f"width / dim_head, so choose a dim_head that divides {width} (e.g. {valid}) or a width that is a "
                "multiple of the head dim"
            )
        return width // dim_head, dim_head
    check_int(block, "num_heads", num_heads, 1)
    if width % num_heads:
        divisors = [h for h in range(1, min(width, 64) + 1) if width % h == 0]
        raise ValueError(
            f"{block}: attention width {what} = {width} is not divisible by num_heads={num_heads}; heads must divide "
            f"the width (valid num_heads for {width}: {divisors})"
        )
    return num_heads, width // num_heads


class AttnCSP(nn.Module):
    """The C3 layout shared by BoT3, DAT3 and CoAt3: ``cv3(cat(m(cv1(x)), cv2(x)))`` with 1x1 Ultralytics ``Conv``.

    Subclasses check their arguments, then call :meth:`_build` with the hidden width and their attention stack.
    """

    def _build(self, c1: int, c2: int, c_: int, m: nn.Module) -> None:
        self.cv1 = Conv(c1, c_, 1)
        self.cv2 = Conv(c1, c_, 1)
        self.cv3 = Conv(2 * c_, c2, 1)
        self.m = m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


def fp16_safe(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)``, computed in fp32 when ``x`` is fp16 or fp16 autocast is on; the result in ``x``'s dtype.

    For modules that are not ours (the comparator families wrap Ultralytics' attention unchanged), whose attention
    logits may exceed fp16's range (65504) and turn into inf, then NaN after the softmax. Under autocast the module's
    parameters are fp32 already and are used as they are (gradients reach them); after ``.half()`` fp32 copies are
    used for the call. bf16 has fp32's range and runs as given.

    Examples:
        >>> conv = nn.Conv2d(4, 4, 1).half()
        >>> fp16_safe(conv, torch.ones(1, 4, 2, 2, dtype=torch.float16)).dtype
        torch.float16
    """
    device = x.device.type
    autocast16 = torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) == torch.float16
    if x.dtype != torch.float16 and not autocast16:
        return module(x)
    state = {k: v.float() if v.is_floating_point() else v for k, v in module.state_dict(keep_vars=True).items()}
    with torch.autocast(device, enabled=False):
        y = torch.func.functional_call(module, state, (x.float(),))
    return y.to(x.dtype)


# ----------------------------------------------------------------------------------------------------- precision
def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp16 / bf16 -> fp32 for logits, bias and softmax; fp32 and fp64 stay."""
    return torch.promote_types(dtype, torch.float32)


def no_autocast(device_type: str) -> contextlib.AbstractContextManager:
    """Leave autocast for a region that picks its own precision; a no-op when autocast is off (nothing to trace)."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()
