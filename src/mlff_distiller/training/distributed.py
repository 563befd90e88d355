"""Several processes, launched by ``torchrun`` (or ``--workers N``): one process group.

``torchrun --nproc-per-node 2 -m mlff_distiller run CONFIG`` starts two processes with
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE`` set; :class:`Distributed`
reads them, joins the process group (NCCL on GPUs, gloo on CPUs) and gives each process its
GPU. ``generate`` and ``label`` share their work out over the processes, ``train`` is one
DistributedDataParallel replica per process (:mod:`mlff_distiller.pipeline`). :func:`launch`
starts such processes on this machine for ``mlff-distill ... --workers N``. Without those
variables (a plain ``mlff-distill train``) it is one process and every call here is free.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence
from datetime import timedelta

import torch
import torch.distributed as dist

TIMEOUT = timedelta(minutes=60)
"""How long a collective waits for the other processes (rank 0 writes checkpoints meanwhile)."""


class Distributed:
    """The place of the current process among all the processes of a run.

    Parameters
    ----------
    rank
        Index of this process among all of them.
    world_size
        Number of processes.
    local_rank
        Index of this process on its machine (which GPU it uses).
    local_world_size
        Number of processes on this machine (None: ``world_size``).
    """

    def __init__(
        self,
        rank: int = 0,
        world_size: int = 1,
        local_rank: int = 0,
        local_world_size: int | None = None,
    ) -> None:
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.local_rank = int(local_rank)
        self.local_world_size = int(local_world_size or world_size)
        self._device = torch.device("cpu")
        self._started = False

    @classmethod
    def from_env(cls) -> Distributed:
        """Read ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE`` (set by torchrun)."""
        env = os.environ
        return cls(
            int(env.get("RANK", "0")),
            int(env.get("WORLD_SIZE", "1")),
            int(env.get("LOCAL_RANK", "0")),
            int(env["LOCAL_WORLD_SIZE"]) if "LOCAL_WORLD_SIZE" in env else None,
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

    def cpu_threads(self) -> int:
        """Torch threads for this process: its cores, shared among this machine's processes."""
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            cores = os.cpu_count() or 1
        return max(1, cores // self.local_world_size)

    def start(self, device: torch.device, *others: torch.device) -> None:
        """Join the process group (if several processes and not joined yet).

        Parameters
        ----------
        device
            This process's device (its GPU is made the current one).
        others
            Devices of tensors that later collectives also use: a group for CUDA and CPU
            tensors has both NCCL and gloo.
        """
        self._device = device
        if device.type == "cuda" and device.index is not None:
            torch.cuda.set_device(device)
        if self.world_size > 1 and not dist.is_initialized():
            types = {d.type for d in (device, *others)}
            backend = "nccl" if types == {"cuda"} else "gloo"
            if "cuda" in types and len(types) > 1:
                backend = "cpu:gloo,cuda:nccl"
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

    def slowest(self, seconds: float) -> float:
        """The largest ``seconds`` of all processes (e.g. the wall time of a shared stage)."""
        if self.world_size == 1:
            return seconds
        tensor = torch.tensor([seconds], dtype=torch.float64, device=self._device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return float(tensor.item())

    def barrier(self) -> None:
        """Wait until every process gets here."""
        if self.world_size > 1:
            if dist.get_backend() == "nccl" and self._device.index is not None:
                dist.barrier(device_ids=[self._device.index])  # NCCL: this process's GPU
            else:
                dist.barrier()


#: Set by :func:`launch` in the processes it starts: the launcher's process id.
LAUNCHER_PID = "MLFF_DISTILL_LAUNCHER_PID"

#: Signals whose handlers torchrun's agent replaces in the launcher (restored after).
_AGENT_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT")


class WorkerError(RuntimeError):
    """A process started by :func:`launch` failed; ``exit_code`` is the launcher's to exit with.

    The message names the processes that failed and how (exit code or signal); each process
    printed its own error before.
    """

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def launch(n_processes: int, args: Sequence[str]) -> None:
    """Run ``python -m mlff_distiller ARGS`` in ``n_processes`` processes of this machine.

    torchrun's own engine (:mod:`torch.distributed.run`, a standalone rendezvous on a free
    port) starts them with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE``
    set, and stops the others as soon as one fails. Unless ``OMP_NUM_THREADS`` is set, each
    gets an equal share of the CPU cores. The processes die with the launcher
    (:func:`exit_with_launcher`): a SIGKILL of it leaves none labelling on.

    Raises
    ------
    WorkerError
        If a process fails: which ones, and their exit code or signal.
    KeyboardInterrupt
        If the launcher is interrupted (Ctrl-C); the processes were stopped with SIGINT.
    """
    import logging
    import tempfile

    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    saved_env = {name: os.environ.get(name) for name in ("OMP_NUM_THREADS", LAUNCHER_PID)}
    if saved_env["OMP_NUM_THREADS"] is None:
        threads = Distributed(local_world_size=n_processes).cpu_threads()
        os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ[LAUNCHER_PID] = str(os.getpid())
    handlers = {name: signal.getsignal(getattr(signal, name)) for name in _AGENT_SIGNALS}
    # The agent logs every failure and every process it stops: each process prints its own.
    logging.disable(logging.ERROR)
    # torchrun's own folder (for its error files) goes with the launch, not left in /tmp.
    logs = tempfile.TemporaryDirectory(prefix="mlff-distill-workers-")
    try:
        torchrun.run(
            torchrun.parse_args(
                [
                    "--standalone",
                    f"--nproc-per-node={n_processes}",
                    f"--log-dir={logs.name}",
                    "-m",
                    "mlff_distiller",
                    *args,
                ]
            )
        )
    except ChildFailedError as exc:
        raise _worker_error(exc, n_processes) from None
    except SignalException as exc:
        if exc.sigval == signal.SIGINT:
            raise KeyboardInterrupt from None
        raise WorkerError(f"stopped by {exc.sigval.name}: the processes were stopped", 1) from None
    finally:
        logs.cleanup()
        logging.disable(logging.NOTSET)
        for name, handler in handlers.items():
            signal.signal(getattr(signal, name), handler)
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _worker_error(exc: Exception, n_processes: int) -> WorkerError:
    """The :class:`WorkerError` of torchrun's ``ChildFailedError``.

    Processes that exited with an error code are the cause; those killed by a signal beside
    them were stopped by torchrun (it may catch one on its way out) and are not named.
    """
    failures = sorted(exc.failures.items())  # type: ignore[attr-defined]
    errors = [(rank, failure) for rank, failure in failures if failure.exitcode > 0]
    if errors:
        causes = [f"process {rank} stopped with exit code {f.exitcode}" for rank, f in errors]
        # One exit code for all (2: an input to fix, 1: a bug) is the launcher's; else 1.
        codes = {failure.exitcode for _, failure in errors}
        exit_code = codes.pop() if len(codes) == 1 else 1
    else:
        causes = [f"process {rank} was killed by {f.signal_name()}" for rank, f in failures]
        exit_code = 1
    return WorkerError(
        f"{'; '.join(causes)} (of {n_processes} processes; each error is printed above, "
        "prefixed with its rank): the other processes were stopped, and everything "
        "finished so far is saved, so after a fix the same command continues",
        exit_code,
    )


def exit_with_launcher() -> None:
    """In a process started by :func:`launch`: die when the launcher dies (Linux).

    torchrun starts every process in a session of its own, so a SIGKILL of the launcher (or
    of its process group) would leave them working beside the next command on the same run
    directory; the kernel kills this process with its parent instead (``PR_SET_PDEATHSIG``).
    A no-op in any other process.
    """
    launcher = os.environ.pop(LAUNCHER_PID, None)
    if launcher is None or not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != int(launcher):  # the launcher died before this process asked
        os._exit(1)
