"""Which processes share a piece of work (rank, world size) and an exact sum across them.

The library never creates or destroys a process group. :meth:`DistContext.resolve` uses, in order:

1. an ``accelerate`` ``Accelerator`` or ``PartialState`` passed in (its processes);
2. an initialised default ``torch.distributed`` process group;
3. otherwise one process. If the environment then says ``WORLD_SIZE > 1``, the processes were launched
   but nobody set up their group (or ``WORLD_SIZE`` is stray): that is a ``ValueError`` at once, rather
   than silently joining a group and waiting up to gloo's 30-minute timeout for peers that never come.

Programs that own the processes' lifetime (the ``mdm-sched profile`` command) create the group with
:func:`launched_state` under ``torchrun`` / ``accelerate launch`` and end it with :func:`end_state`
before exiting: a process that exits while its gloo group is alive can abort
("terminate called without an active exception").
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch

if TYPE_CHECKING:
    from accelerate import PartialState

__all__ = ["AcceleratorLike", "DistContext", "env_world_size", "launched_by_launcher", "launched_state", "end_state"]

# What torchrun (and `accelerate launch`, which runs torchrun) puts in every process's environment.
_LAUNCHER_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@runtime_checkable
class AcceleratorLike(Protocol):
    """The part of ``accelerate.Accelerator`` / ``accelerate.PartialState`` used here."""

    num_processes: int
    process_index: int


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 when unset)."""
    text = os.environ.get("WORLD_SIZE", "1").strip() or "1"
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"the environment variable WORLD_SIZE={text!r} is not an integer; unset it or set it to the "
                         "number of processes") from None


def _dist_initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


@dataclass(frozen=True)
class DistContext:
    """Rank and world size of the processes sharing the work, and an exact sum across them.

    ``device`` is where collectives run (a CUDA device for nccl, the CPU for gloo).
    """

    world: int = 1
    rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        """True on the process that writes files and shows progress (rank 0)."""
        return self.rank == 0

    @classmethod
    def resolve(cls, accelerator: AcceleratorLike | None = None) -> DistContext:
        """The context of this process; see the module docstring for the rules and the errors."""
        if accelerator is not None:
            return cls._from_accelerator(accelerator)
        if _dist_initialized():
            return cls._from_group(None)
        world = env_world_size()
        if world > 1:
            raise ValueError(
                f"WORLD_SIZE={world} is set but no torch.distributed process group exists and no accelerator was "
                "passed: pass accelerator=accelerate.PartialState() (or initialise torch.distributed) to share the "
                "work, or unset WORLD_SIZE")
        return cls()

    @classmethod
    def _from_accelerator(cls, accelerator: AcceleratorLike) -> DistContext:
        world, rank = getattr(accelerator, "num_processes", None), getattr(accelerator, "process_index", None)
        if not (isinstance(world, int) and isinstance(rank, int) and world >= 1 and 0 <= rank < world):
            raise TypeError("accelerator must be an accelerate.Accelerator or accelerate.PartialState (with integer "
                            f"num_processes and process_index), got {type(accelerator).__name__}")
        env = env_world_size()
        if world == 1 and env > 1:
            raise ValueError(f"the accelerator reports 1 process but WORLD_SIZE={env}: on a machine without GPUs "
                             "create it with cpu=True (accelerate.PartialState(cpu=True)), or unset WORLD_SIZE")
        if world == 1:
            return cls()
        if not _dist_initialized():
            raise ValueError(f"the accelerator reports {world} processes but torch.distributed is not initialised; "
                             "create it under `accelerate launch` / `torchrun`")
        return cls._from_group(getattr(accelerator, "device", None))

    @classmethod
    def _from_group(cls, device: torch.device | None) -> DistContext:
        dist = torch.distributed
        if dist.get_backend() == "nccl":  # nccl reduces CUDA tensors: this process's device
            if device is None or device.type != "cuda":
                device = torch.device("cuda", torch.cuda.current_device())
        else:
            device = torch.device("cpu")
        return cls(world=dist.get_world_size(), rank=dist.get_rank(), device=device)

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Elementwise sum of ``t`` over the processes (returned on the CPU). Where each entry is non-zero
        on one process only, the sum is exact: the result does not depend on the number of processes."""
        if self.world == 1:
            return t
        buf = t.to(self.device)
        torch.distributed.all_reduce(buf, op=torch.distributed.ReduceOp.SUM)
        return buf.cpu()

    def barrier(self) -> None:
        """Wait for every process."""
        if self.world > 1:
            torch.distributed.barrier()


def launched_by_launcher() -> bool:
    """True when ``torchrun`` / ``accelerate launch`` started this process as one of several."""
    return env_world_size() > 1 and all(os.environ.get(k) for k in _LAUNCHER_VARS)


def launched_state(*, cpu: bool) -> PartialState | None:
    """For programs that own their processes: the accelerate state of a launched process, or None.

    Under ``torchrun`` / ``accelerate launch`` (several processes) this creates ``PartialState(cpu=cpu)``,
    which initialises the process group (gloo for ``cpu=True``, nccl on GPUs) and picks this process's
    device; end it with :func:`end_state`. A single process (or an existing process group) gives None.
    ``WORLD_SIZE > 1`` without the rest of a launcher's environment raises ``ValueError``.
    """
    if _dist_initialized() or env_world_size() <= 1:
        return None
    if not launched_by_launcher():
        missing = [k for k in _LAUNCHER_VARS if not os.environ.get(k)]
        raise ValueError(f"WORLD_SIZE={env_world_size()} is set but this process was not started by torchrun or "
                         f"accelerate launch ({', '.join(missing)} unset): unset WORLD_SIZE to run one process, or "
                         "launch with `torchrun --nproc_per_node K` / `accelerate launch`")
    from accelerate import PartialState

    return PartialState(cpu=cpu)


def end_state(state: PartialState | None, *, wait: bool = True) -> None:
    """Wait for every process, then destroy the process group ``state`` created (None: nothing to do).

    Pass ``wait=False`` when leaving on an error: the other processes may never reach the barrier, and the
    launcher stops them once this one exits.
    """
    if state is None:
        return
    if wait:
        state.wait_for_everyone()
    state.destroy_process_group()
