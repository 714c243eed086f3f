"""torch.distributed helpers shared by training, evaluation and analysis (processes launched by torchrun).

Distributed mode comes only from the environment `torchrun` sets: `WORLD_SIZE`, `RANK`,
`LOCAL_RANK` (and `MASTER_ADDR`/`MASTER_PORT` for the `env://` rendezvous). alignlens never
spawns processes itself. Without those variables (or with `WORLD_SIZE=1`) every helper here is a
no-op for one process: rank 0 of 1, `is_main()` is True, reductions return their input,
`barrier()` returns at once.

- `env_world()`: what the launcher asked for; `world()`: the group this process belongs to now.
- `process_group(device)`: join the group for a block (gloo for CPU devices, nccl for CUDA);
  reuses a group the caller already started and then leaves it running.
- `rank_device(device)`: `cuda` without an index (e.g. from `auto`) becomes `cuda:LOCAL_RANK`.
- Collectives: `barrier`, `sum_ints` (int64: exact in any order), `sum_floats` (float64: the
  backend chooses the order of the additions, so with more than two ranks the last bits may
  depend on it), `exact_float_sums` (each value comes from exactly one rank: exact), `max_int`,
  `any_flag`, `gather_objects`, `broadcast_object`.
- Data parallelism: `assign_batches(costs, size)` (whole batches of one global plan, balanced by
  padded tokens, deterministic) and `my_batches(costs)` (this rank's; `engine.score_prompts`'s
  `select_batches`).
- Failure handling: `agree(fn)` runs `fn` on every rank and makes a failure on one rank a
  failure on all (no rank waits forever in a later collective); `on_main(fn)` runs `fn` on rank 0
  only while the others wait, and raises on every rank when it failed.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Iterator, Mapping, Sequence, TypeVar

import torch

from alignlens import AlignlensError

T = TypeVar("T")

#: The variables torchrun sets for every process (read by `env_world`).
ENV_KEYS = ("WORLD_SIZE", "RANK", "LOCAL_RANK")


@dataclass(frozen=True)
class World:
    """One process's place among `size` processes (rank 0 of 1 when not distributed)."""

    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that prepares output folders and writes shared files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def _env_int(environ: Mapping[str, str], key: str, default: int) -> int:
    raw = environ.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise AlignlensError(f"environment variable {key}={raw!r} is not a whole number "
                             f"(set by torchrun: launch with torchrun --nproc_per_node=N)") from None
    if value < 0:
        raise AlignlensError(f"environment variable {key}={raw!r} is negative")
    return value


def env_world(environ: Mapping[str, str] | None = None) -> World:
    """The world the launcher asked for (`WORLD_SIZE`, `RANK`, `LOCAL_RANK`; unset: 1, 0, 0).
    AlignlensError naming the variable when they are malformed or inconsistent."""
    environ = os.environ if environ is None else environ
    size = _env_int(environ, "WORLD_SIZE", 1)
    rank = _env_int(environ, "RANK", 0)
    local = _env_int(environ, "LOCAL_RANK", rank)
    if size < 1:
        raise AlignlensError(f"environment variable WORLD_SIZE={size} must be at least 1")
    if size > 1 and "RANK" not in environ:
        raise AlignlensError(f"WORLD_SIZE={size} is set but RANK is not (launch with torchrun --nproc_per_node=N)")
    if rank >= size:
        raise AlignlensError(f"environment variable RANK={rank} is not below WORLD_SIZE={size}")
    return World(rank=rank, local_rank=local, size=size)


def initialized() -> bool:
    """A process group is running in this process."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def world() -> World:
    """This process's place in the running group (rank 0 of 1 when there is none)."""
    if not initialized():
        return World()
    dist = torch.distributed
    return World(rank=dist.get_rank(), local_rank=_env_int(os.environ, "LOCAL_RANK", dist.get_rank()),
                 size=dist.get_world_size())


def is_main() -> bool:
    """Rank 0 of the running group, or a single process."""
    return world().is_main


def main_process() -> bool:
    """Rank 0 of the running group, or, before the group starts, of the one the launcher asked for
    (only rank 0 locks and writes output folders; the others must not see its lock as another
    run's). A malformed launcher environment counts as rank 0 (it is refused elsewhere, by name)."""
    if initialized():
        return is_main()
    try:
        return env_world().is_main
    except AlignlensError:
        return True


def rank_device(device: torch.device) -> torch.device:
    """The device of this rank: a CUDA device without an index (`cuda`, or `auto` resolved to it)
    becomes `cuda:LOCAL_RANK` when the launcher asked for several processes; anything else is kept."""
    env = env_world()
    if device.type == "cuda" and device.index is None and env.distributed:
        return torch.device("cuda", env.local_rank)
    return device


def backend_for(device: torch.device) -> str:
    """nccl for CUDA devices, gloo otherwise (CPU)."""
    return "nccl" if device.type == "cuda" else "gloo"


@contextmanager
def process_group(device: torch.device | str = "cpu", timeout: timedelta | None = None) -> Iterator[World]:
    """Inside the block this process belongs to the torchrun group (gloo on CPU, nccl on CUDA).

    A group the caller already started is used and left running; otherwise one is started from
    the environment (`env_world`) and destroyed after the block. Not launched by torchrun
    (`WORLD_SIZE` unset or 1): nothing happens and the world is rank 0 of 1."""
    if initialized():
        yield world()
        return
    env = env_world()
    if not env.distributed:
        yield World()
        return
    dev = torch.device(device) if isinstance(device, str) else device
    if not torch.distributed.is_available():
        raise AlignlensError(f"WORLD_SIZE={env.size} asks for distributed mode but this torch has no torch.distributed")
    for key in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(key):
            raise AlignlensError(f"WORLD_SIZE={env.size} is set but {key} is not (launch with torchrun --nproc_per_node=N)")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    kwargs: dict[str, Any] = {"timeout": timeout} if timeout is not None else {}
    try:
        torch.distributed.init_process_group(backend_for(dev), rank=env.rank, world_size=env.size, **kwargs)
    except Exception as exc:  # noqa: BLE001 - one clear line
        raise AlignlensError(f"cannot join the process group (rank {env.rank} of {env.size}, backend "
                             f"{backend_for(dev)}): {_first_line(exc)}") from None
    try:
        yield world()
    finally:
        torch.distributed.destroy_process_group()


# ---- collectives (no-ops for one process) ----------------------------------------------------


def _comm_device() -> torch.device:
    """Where collective tensors live: the current CUDA device for nccl, the CPU for gloo."""
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    """Wait until every rank got here (no-op for one process)."""
    if world().distributed:
        torch.distributed.barrier()


def _all_reduce(values: torch.Tensor, op: Any) -> torch.Tensor:
    if not world().distributed:
        return values
    t = values.to(_comm_device())
    torch.distributed.all_reduce(t, op=op)
    return t.cpu()


def sum_ints(values: Sequence[int]) -> list[int]:
    """Elementwise sums over ranks as int64 (exact, whatever the order of the additions)."""
    t = _all_reduce(torch.tensor(list(values), dtype=torch.int64), torch.distributed.ReduceOp.SUM)
    return [int(x) for x in t.tolist()]


def sum_floats(values: Sequence[float]) -> list[float]:
    """Elementwise float64 sums over ranks. The backend orders the additions: with two ranks the
    sum is the same in either order; with more, the last bits may depend on that order."""
    t = _all_reduce(torch.tensor(list(values), dtype=torch.float64), torch.distributed.ReduceOp.SUM)
    return [float(x) for x in t.tolist()]


def exact_float_sums(values: Sequence[float | None]) -> list[float]:
    """Entry i from the one rank that holds it (the others give None): a float64 all-reduce where
    every entry has exactly one non-zero addend, so the result is the holder's value, bit for bit.
    Used to collect per-batch values that are then summed in batch order (as one process would)."""
    return sum_floats([0.0 if v is None else v for v in values])


def max_int(value: int) -> int:
    """The largest of the ranks' values."""
    return int(_all_reduce(torch.tensor([value], dtype=torch.int64), torch.distributed.ReduceOp.MAX)[0])


def any_flag(flag: bool) -> bool:
    """True on every rank when it is True on at least one."""
    return max_int(int(bool(flag))) > 0


def gather_objects(obj: T) -> list[T]:
    """Every rank's `obj` (picklable), in rank order, on every rank."""
    w = world()
    if not w.distributed:
        return [obj]
    out: list[Any] = [None] * w.size
    torch.distributed.all_gather_object(out, obj)
    return out


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank `src`'s `obj` (picklable) on every rank."""
    if not world().distributed:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=src)
    return box[0]


# ---- failures ------------------------------------------------------------------------------


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _describe(exc: BaseException) -> tuple[str, int]:
    """(one line, exit code) of a failure, for the other ranks' message."""
    if isinstance(exc, AlignlensError):
        return _first_line(exc), exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", 130
    return f"{type(exc).__name__}: {_first_line(exc)}", 1


def _raise_for(failures: list[tuple[int, tuple[str, int]] | None]) -> None:
    failed = [f for f in failures if f is not None]
    if failed:
        rank, (msg, code) = failed[0]
        err = AlignlensError(f"stopped because rank {rank} failed: {msg}")
        err.exit_code = code
        raise err


def agree(fn: Callable[[], T]) -> T:
    """`fn()` on every rank; when it raises on any rank, every rank raises: the failing ones their
    own exception, the others an AlignlensError naming the first failed rank (same exit code).
    Every rank must call it (it is a collective)."""
    err: BaseException | None = None
    result: Any = None
    try:
        result = fn()
    except BaseException as exc:  # noqa: BLE001 - re-raised below, on every rank
        err = exc
    if world().distributed:
        failures = gather_objects(None if err is None else (world().rank, _describe(err)))
        if err is None:
            _raise_for(failures)
    if err is not None:
        raise err
    return result


def on_main(fn: Callable[[], T]) -> T | None:
    """`fn()` on rank 0 while the other ranks wait (this is their barrier); its result on rank 0,
    None elsewhere. When it raises, rank 0 raises it and the others an AlignlensError saying so."""
    w = world()
    if not w.distributed:
        return fn()
    err: BaseException | None = None
    result: Any = None
    if w.is_main:
        try:
            result = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised below, on every rank
            err = exc
    failure = broadcast_object(None if err is None else (0, _describe(err)))
    if err is not None:
        raise err
    _raise_for([failure])
    return result


# ---- data parallelism: whole batches of one global plan ---------------------------------------


def assign_batches(costs: Sequence[int], size: int) -> list[int]:
    """The rank of each batch, balanced by cost (padded tokens): the largest batch first (ties: plan
    order) goes to the least-loaded rank (ties: the lower rank). Deterministic, so every rank
    computes the same assignment; with fewer batches than ranks some ranks get none."""
    load = [0] * size
    owner = [0] * len(costs)
    for j in sorted(range(len(costs)), key=lambda j: (-costs[j], j)):
        r = min(range(size), key=lambda r: (load[r], r))
        owner[j] = r
        load[r] += costs[j]
    return owner


def my_batches(costs: Sequence[int]) -> list[int]:
    """The batches this rank runs (`assign_batches` over the running group; all of them alone).
    Pass as `engine.score_prompts(select_batches=...)`."""
    w = world()
    if not w.distributed:
        return list(range(len(costs)))
    return [j for j, r in enumerate(assign_batches(costs, w.size)) if r == w.rank]
