"""Data order and per-micro-batch seeds that do not depend on the number of processes.

Epoch ``e`` of a dataset of ``n`` examples visits ``perm = randperm(n, seed + e)`` truncated
to ``steps * B`` (B = the global batch; the incomplete last batch is dropped so that every
optimizer step sees exactly B examples). Global step ``s`` of the epoch uses
``perm[s*B : (s+1)*B]``, cut into ``W * A`` micro-batches of ``m = B / (W * A)`` examples
(W processes, A accumulation steps). Micro-batch ``q`` (0 <= q < W*A) is
``perm[s*B + q*m : s*B + (q+1)*m]``; rank ``r`` runs ``q = k*W + r`` at accumulation step
``k``. So one process with A' = W*A runs exactly the same micro-batches, with the same
padding, as W processes with A.

Randomness inside a training step (dropout, RS-RP noise, PGD/FreeLB random starts) comes from
torch's default generator, which the trainer re-seeds before every micro-batch with
:func:`micro_seed` of (run seed, global step, q). The noise a micro-batch gets is then a
function of which examples it holds, not of the rank that runs it — which is what lets a
2-rank ZeRO run reproduce a single-process run with accumulation (same losses and parameters
up to floating-point summation order), and what makes resuming exact without replaying the
generators.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler


class GlobalBatchSampler(Sampler[int]):
    """This rank's example indices for steps ``start_step ..`` of one epoch, micro-batch by micro-batch.

    Yields ``steps_left * A * m`` indices in the order the rank consumes them (use it with a
    DataLoader of ``batch_size = m`` and ``drop_last=False``).
    """

    def __init__(
        self,
        num_examples: int,
        *,
        global_batch: int,
        micro_batch: int,
        world_size: int,
        rank: int,
        seed: int,
        epoch: int,
        start_step: int = 0,
    ) -> None:
        if global_batch % (micro_batch * world_size):
            raise ValueError(
                f"global batch {global_batch} is not a multiple of "
                f"micro batch {micro_batch} x world {world_size}"
            )
        self.steps = num_examples // global_batch
        self.B, self.m, self.W, self.r = global_batch, micro_batch, world_size, rank
        self.A = global_batch // (micro_batch * world_size)
        self.start_step = start_step
        g = torch.Generator().manual_seed(seed + epoch)
        self.perm = torch.randperm(num_examples, generator=g)[: self.steps * global_batch].tolist()

    def __iter__(self) -> Iterator[int]:
        for s in range(self.start_step, self.steps):
            base = s * self.B
            for k in range(self.A):
                q = k * self.W + self.r
                yield from self.perm[base + q * self.m : base + (q + 1) * self.m]

    def __len__(self) -> int:
        return max(0, self.steps - self.start_step) * self.A * self.m


def micro_seed(seed: int, step: int, q: int) -> int:
    """A 63-bit seed for micro-batch ``q`` of global optimizer step ``step`` (0-based)."""
    state = np.random.SeedSequence([seed & 0xFFFFFFFF, step, q, 0x5EED]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))
