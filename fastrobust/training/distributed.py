"""Process-group set-up for single-process, torchrun and DeepSpeed-launcher runs.

The launchers (``torchrun``, ``deepspeed``) export ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT``. A plain ``python``/``fastrobust`` process has none of
them; if such a process asks for DeepSpeed, ``deepspeed.init_distributed`` would fall into
MPI discovery (and fail without mpi4py), so we export a one-rank world on a free local port
first. Without DeepSpeed and with one process, no process group is created at all.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

# The final XLT + G-XLT evaluation runs on rank 0 alone while the other ranks wait at the next
# collective; XNLI's 225 G-XLT pairs with a large model can take longer than the default 30 min.
COLLECTIVE_TIMEOUT = timedelta(hours=4)


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: ``rank`` of ``world_size`` processes, on ``device``."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    deepspeed: bool
    # True when init_distributed created the process group (so close() destroys it); a group the
    # caller made before is the caller's to close.
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 or (dist.is_available() and dist.is_initialized())

    def barrier(self) -> None:
        if dist.is_available() and dist.is_initialized():
            dist.barrier()

    def close(self) -> None:
        """Waits for every rank, then ends the process group if this context created it (a group
        the caller made is the caller's to end). Every rank thus leaves with no collective in
        flight: a rank that exits while its peer still talks to it can abort the peer in gloo's
        or NCCL's teardown."""
        self.barrier()
        if self.owns_group and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()

    def all_reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """Mean over ranks of ``tensor`` (any shape); the identity with one process."""
        if self.world_size == 1:
            return tensor
        out = tensor.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out / self.world_size

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return tensor
        out = tensor.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    def all_reduce_max(self, tensor: torch.Tensor) -> torch.Tensor:
        """Elementwise maximum over ranks of ``tensor``; the identity with one process."""
        if self.world_size == 1:
            return tensor
        out = tensor.detach().to(self._comm_device(), copy=True)
        dist.all_reduce(out, op=dist.ReduceOp.MAX)
        return out.to(tensor.device)

    def broadcast_float(self, value: float) -> float:
        """Rank 0's ``value`` on every rank (so that every rank takes the same decision)."""
        if self.world_size == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self._comm_device())
        dist.broadcast(t, src=0)
        return float(t.item())

    def _comm_device(self) -> torch.device:
        # gloo reduces CPU tensors, nccl CUDA tensors.
        if dist.get_backend() == "nccl":
            return self.device
        return torch.device("cpu")


def free_port() -> int:
    """A TCP port on localhost that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init_distributed(use_deepspeed: bool) -> DistContext:
    """Joins (or creates) the process group the launcher prepared and picks the device.

    Device: ``cuda:LOCAL_RANK`` when CUDA is present, else CPU. Backend: DeepSpeed's choice
    under DeepSpeed (gloo on CPU), otherwise nccl on CUDA and gloo on CPU.
    """
    env = os.environ
    world = int(env.get("WORLD_SIZE", "1"))
    rank = int(env.get("RANK", "0"))
    local_rank = int(env.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    owns_group = (world > 1 or use_deepspeed) and not (dist.is_available() and dist.is_initialized())
    if owns_group:
        if world == 1 and "MASTER_ADDR" not in env:
            # A one-rank world for DeepSpeed without a launcher; keeps it away from MPI discovery.
            env.setdefault("RANK", "0")
            env.setdefault("LOCAL_RANK", "0")
            env.setdefault("WORLD_SIZE", "1")
            env["MASTER_ADDR"] = "127.0.0.1"
            env["MASTER_PORT"] = str(free_port())
        if use_deepspeed:
            import deepspeed  # optional: only DeepSpeed runs need it installed

            deepspeed.init_distributed(auto_mpi_discovery=False, timeout=COLLECTIVE_TIMEOUT, verbose=False)
        else:
            backend = "nccl" if device.type == "cuda" else "gloo"
            dist.init_process_group(backend=backend, timeout=COLLECTIVE_TIMEOUT)
    if dist.is_available() and dist.is_initialized():
        world = dist.get_world_size()
        rank = dist.get_rank()
    return DistContext(
        rank=rank,
        world_size=world,
        local_rank=local_rank,
        device=device,
        deepspeed=use_deepspeed,
        owns_group=owns_group,
    )
