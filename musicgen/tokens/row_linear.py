"""The linear maps of the CPU's batched step: a row's numbers do not depend on the other rows.

A batched step computes many requests' rows in one product, and a request's tokens must never
depend on its neighbours. F.linear (MKL) picks its kernel by the row count, and a row's numbers
change with it: on the small LM's shapes they are the same from 2 to 15 rows and change at 16 (and
at 1); on the demo LM's small shapes they change at 6. The two forms here gave the same numbers
for every row count from 2 to 2N wherever we measured (`python -m tooling.bench.batched_step`;
docs/benchmarks.md has its figures), and the step checks that it holds on its machine when it is
built (slots.PerSlotRows.occupancy_leaves_rows_alone):

- PackedLinear: oneDNN's product over a weight packed once in oneDNN's blocked layout, through
  torch's own mkldnn ops. It reads the weights at F.linear's 2-row speed and grows slowly with the
  rows, so a batch of one costs what one prediction alone costs. It keeps a packed copy of every
  weight the step uses: the LM's linear weights once more.
- wide_linear, (W @ x^T)^T (MKL, no copy): the same time for any row count, about what F.linear
  takes for 6 to 8 rows. It serves where torch has no oneDNN, the weights are not float32, or the
  packed products fail the check.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from musicgen.tokens.layer import Linear


def wide_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [R, in] -> [R, out] as (weight @ x^T)^T: MKL's product with few columns, whose columns do
    not depend on each other or on how many there are (R >= 2)."""
    out = torch.mm(weight, x.t()).t()
    return out if bias is None else out + bias


def bind_wide(weight: torch.Tensor, bias: torch.Tensor | None) -> Linear:
    return lambda x: wide_linear(x, weight, bias)


class PackedLinear:
    """x [R, in] -> [R, out] through oneDNN, over a copy of `weight` packed for up to `rows` rows."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, rows: int):
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), rows)
        self.bias = None if bias is None else bias.detach()
        self.nbytes = weight.numel() * weight.element_size()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.packed, self.bias, "none", [], "")


def packing_works(weight: torch.Tensor) -> bool:
    """Whether `weight` can be packed for oneDNN here: a float32 CPU tensor, torch built with
    oneDNN, and the packed product giving F.linear's numbers to float32 rounding."""
    if weight.device.type != "cpu" or weight.dtype != torch.float32 or not torch.backends.mkldnn.is_available():
        return False
    try:
        x = torch.randn(2, weight.shape[1], generator=torch.Generator().manual_seed(0))
        packed = PackedLinear(weight, None, 2)(x)
    except (RuntimeError, AttributeError):  # an op this build of torch lacks
        return False
    expected = F.linear(x, weight)
    return bool(torch.allclose(packed, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item()))


class PackedBinder:
    """Binds each linear map to a PackedLinear for up to `rows` rows, and counts the copies' bytes."""

    def __init__(self, rows: int):
        self.rows = rows
        self.nbytes = 0

    def __call__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> Linear:
        linear = PackedLinear(weight, bias, self.rows)
        self.nbytes += linear.nbytes
        return linear
