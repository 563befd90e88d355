"""Training in several processes, launched by ``torchrun``: one DDP replica per process.

``torchrun --nproc-per-node 2 -m mlff_distiller train RUN`` starts two processes with
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` set; :class:`Distributed` reads them, joins the
process group (NCCL on GPUs, gloo on CPUs) and gives each process its GPU. Without those
variables (a plain ``mlff-distill train``) it is one process and every call here is free.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

TIMEOUT = timedelta(minutes=60)
"""How long a collective waits for the other processes (rank 0 writes checkpoints meanwhile)."""


class Distributed:
    """The place of the current process among the training processes.

    Parameters
    ----------
    rank
        Index of this process among all of them.
    world_size
        Number of processes.
    local_rank
        Index of this process on its machine (which GPU it uses).
    """

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0) -> None:
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.local_rank = int(local_rank)
        self._device = torch.device("cpu")
        self._started = False

    @classmethod
    def from_env(cls) -> Distributed:
        """Read ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (set by torchrun)."""
        env = os.environ
        return cls(
            int(env.get("RANK", "0")),
            int(env.get("WORLD_SIZE", "1")),
            int(env.get("LOCAL_RANK", "0")),
        )

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, which writes checkpoints, logs and the student."""
        return self.rank == 0

    def device(self, name: str) -> torch.device:
        """The device of this process: ``cuda`` means this process's GPU (``LOCAL_RANK``)."""
        device = torch.device(name)
        if device.type == "cuda" and device.index is None and self.world_size > 1:
            return torch.device("cuda", self.local_rank)
        return device

    def start(self, device: torch.device) -> None:
        """Join the process group (if several processes and not joined yet)."""
        self._device = device
        if device.type == "cuda" and device.index is not None:
            torch.cuda.set_device(device)
        if self.world_size > 1 and not dist.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            dist.init_process_group(backend, timeout=TIMEOUT)
            self._started = True

    def stop(self) -> None:
        """Leave the process group if :meth:`start` joined it."""
        if self._started:
            dist.destroy_process_group()
            self._started = False

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over all processes, in place; every process gets the same bits."""
        if self.world_size > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def agree(self, value: float) -> float:
        """Rank 0's ``value`` on every process (e.g. a wall time that decides when to stop)."""
        if self.world_size == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self._device)
        dist.broadcast(tensor, src=0)
        return float(tensor.item())

    def barrier(self) -> None:
        """Wait until every process gets here."""
        if self.world_size > 1:
            dist.barrier()
