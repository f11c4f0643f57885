"""Training in several processes (data parallel), exact against one process: launch detection, the process group,
DDP / FSDP2 wrapping, each rank's share of an optimizer step, exact reductions, and the world-size-independent
adapter and optimizer state of checkpoints.

Knows:
- launches: `torchrun` (also what `accelerate launch --multi_gpu/--use_fsdp` runs, and what a Slurm or Kubernetes job
  wraps) sets `RANK`, `WORLD_SIZE`, `LOCAL_RANK` and `MASTER_ADDR`/`MASTER_PORT` (the `env://` rendezvous of
  `torch.distributed.init_process_group`); `mpirun` (accelerate's multi-CPU launcher) sets `OMPI_COMM_WORLD_*` or
  `PMI_*` instead. A process with none of them is a one-process run (`Dist()`); a launched one is distributed even
  with one process, so `torchrun --nproc-per-node 1` runs the same code as N processes. The process group is
  created by the first run of a process and kept until the process exits (a second run joins it); one the caller
  initialised is used as it is.
- backends: NCCL on CUDA (each process on GPU `LOCAL_RANK`, set before the model is loaded), gloo on a CPU.
- strategies (`TrainConfig.distributed_strategy`): `ddp` is torch's DistributedDataParallel around `LossModule`, a
  module whose forward is the completion-only loss (`vrp.loss.loss_sum` runs the decoder body and the LM head
  separately, so the DDP/FSDP hooks must sit on a module whose forward does all of it). DDP synchronises only
  parameters that require gradients, the LoRA weights: their initial values are broadcast from rank 0 once and
  their gradients all-reduced once per optimizer step (`no_sync` on the step's other forward/backward calls); the
  frozen base is loaded by every rank from the same files and never synchronised (`init_sync=False`, no buffer
  broadcast). `fsdp` is FSDP2 (`torch.distributed.fsdp.fully_shard`) on every decoder layer (the model's
  `_no_split_modules`) and on the `LossModule` root: frozen base and LoRA weights are sharded across ranks, the LoRA
  weights trained; its gradients are reduce-scattered after every call. `auto` is `fsdp` under
  `accelerate launch --use_fsdp` (it sets `ACCELERATE_USE_FSDP=true`), else `ddp`. FSDP with 4-bit weights is
  refused: FSDP2 all-gathers bitsandbytes' `Params4bit` into plain parameters and loses their quantization state.
- exactness (see `share`, `grad_scale`): an optimizer step takes `grad_accum x world_size` micro-batches of the
  one-process epoch order; rank r takes micro-batches r, r + W, r + 2W, ... of them (a row is on one rank only,
  nothing is repeated to even out the ranks) and every rank runs ceil(k / W) forward/backward calls, a rank with
  fewer micro-batches running one of them (or the step's first) again at weight 0; each rank's summed loss is
  multiplied by W / N, N the step's target tokens over all ranks (all-reduced before backward), as DDP and FSDP average
  gradients over the ranks: the gradient is then the sum over all the step's targets divided by N, as in one
  process with `grad_accum x W` micro-batches (up to float summation order).
- checkpoints: the full LoRA weights and the optimizer state in torch's one-process layout (FSDP gathers its shards;
  `full_adapter_state`, `full_optimizer_state`), written by rank 0 only, so any world size can resume them; the RNG
  states of all ranks (`gather_objects`); on resume rank 0 reads and broadcasts (`broadcast_object`), so only rank
  0 needs the run dir, while every node needs the model and the dataset.
Does not know: the training loop (`vrp.train.loop`), checkpoint files (`vrp.train.checkpoint`), what a batch holds.
"""
from __future__ import annotations

import atexit
import contextlib
import inspect
import math
import os
from dataclasses import dataclass
from typing import Any, Callable

from vrp.errors import ConfigError, VrpError
from vrp.loss import loss_sum
from vrp.train.launch import detect_launch, resolve_strategy


def _loss_module(model: Any) -> Any:
    """`LossModule(model)`: a torch module whose forward(batch) is `vrp.loss.loss_sum(model, batch)`."""
    import torch

    class LossModule(torch.nn.Module):
        """The completion-only loss as a module, so that DDP / FSDP hooks see the whole forward."""

        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.model = inner

        def forward(self, batch: dict[str, Any]) -> Any:
            return loss_sum(self.model, batch)

    return LossModule(model)


class _FullAdapter:
    """A PEFT model whose `save_pretrained` writes the given full LoRA state (gathered FSDP shards)."""

    def __init__(self, model: Any, state: dict[str, Any]) -> None:
        self._model, self._state = model, state

    def save_pretrained(self, path: Any, **kw: Any) -> None:
        self._model.save_pretrained(path, state_dict=self._state, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


class Discard:
    """Stands in for the TensorBoard writer and the metrics.jsonl file on ranks other than 0: writes nothing."""

    def add_scalar(self, *args: Any, **kw: Any) -> None:
        """Nothing."""

    def write(self, text: str) -> int:
        """Nothing; returns len(text) as a file would."""
        return len(text)

    def flush(self) -> None:
        """Nothing."""

    def close(self) -> None:
        """Nothing."""


@dataclass
class Dist:
    """This process's place in the run: rank, world size, local rank (GPU index), strategy (`single` for a process
    started on its own, else `ddp` / `fsdp`), device (`cpu` / `cuda`), whether it created the process group
    (destroyed when the process exits), and the wrapped loss module (`engine`, after `wrap`)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    strategy: str = "single"
    device: str = "cpu"
    owns_group: bool = False
    engine: Any = None

    @property
    def active(self) -> bool:
        """True in a launched run (any world size)."""
        return self.strategy != "single"

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes the run dir, the logs and the progress bar."""
        return self.rank == 0

    @property
    def grad_scale(self) -> int:
        """What each rank's loss is multiplied by before backward: the world size, which DDP and FSDP divide the
        summed gradients by again (they average over ranks)."""
        return self.world_size if self.active else 1

    # --- the share of a step ----------------------------------------------------------------------------------
    def share(self, items: list[Any]) -> tuple[list[Any], int]:
        """`(this rank's items, calls)`: items r, r + W, ... of `items` (the micro-batches of one optimizer step or
        of a validation), and the number of forward calls every rank makes, ceil(len(items) / W)."""
        if not self.active:
            return list(items), len(items)
        return list(items[self.rank::self.world_size]), math.ceil(len(items) / self.world_size)

    def loss(self, model: Any, batch: dict[str, Any]) -> tuple[Any, int]:
        """`vrp.loss.loss_sum(model, batch)`, through the DDP / FSDP module when there is one."""
        if self.engine is not None:
            return self.engine(batch)

        return loss_sum(model, batch)

    def sync(self, last: bool) -> contextlib.AbstractContextManager:
        """Context of one backward of an optimizer step: DDP all-reduces only at the step's `last` call."""
        if self.strategy == "ddp" and not last and self.engine is not None:
            return self.engine.no_sync()
        return contextlib.nullcontext()

    # --- collectives ------------------------------------------------------------------------------------------
    def all_sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of `values` over all ranks (float64, exact for counts below 2**53); `values` itself in
        one process."""
        if not self.active:
            return [float(v) for v in values]
        import torch
        import torch.distributed as dist

        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(t)
        return t.tolist()

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank (pickled)."""
        if not self.active:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather_objects(self, obj: Any) -> list[Any]:
        """`[obj of rank 0, obj of rank 1, ...]` on every rank (pickled)."""
        if not self.active:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def main_only(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        """`fn(*args, **kw)` run by rank 0 only (reading or writing the run dir); its result, or its error, reaches
        every rank, so that all ranks stop together instead of waiting for each other."""
        if not self.active:
            return fn(*args, **kw)
        result, failure, error = None, None, None
        if self.is_main:
            try:
                result = fn(*args, **kw)
            except ConfigError as e:
                error, failure = e, ("config", e.field, e.message)
            except Exception as e:  # noqa: BLE001 - every rank must learn that rank 0 stopped
                error, failure = e, ("vrp", f"rank 0 stopped: {type(e).__name__}: {e}", None)
        result, failure = self.broadcast_object((result, failure))
        if failure is not None:
            if error is not None:
                raise error
            raise ConfigError(failure[1], failure[2]) if failure[0] == "config" else VrpError(failure[1])
        return result

    def _comm_device(self) -> str:
        return "cuda" if self.device == "cuda" else "cpu"

    # --- the model --------------------------------------------------------------------------------------------
    def wrap(self, model: Any) -> None:
        """Make `model` (a PEFT model, identical on every rank) data parallel: broadcast its trainable weights from
        rank 0, then wrap a `LossModule` around it in DDP or FSDP2 (`engine`). Build the optimizer afterwards (FSDP
        replaces the parameters by sharded ones). Nothing happens in one process."""
        if not self.active:
            return
        import torch.distributed as dist

        for p in model.parameters():
            if p.requires_grad:
                dist.broadcast(p.data, src=0)
        if self.strategy == "fsdp":
            from torch.distributed.fsdp import fully_shard

            base = model.get_base_model() if hasattr(model, "get_base_model") else model
            kinds = set(getattr(base, "_no_split_modules", None) or ())
            layers = [m for m in model.modules() if type(m).__name__ in kinds]
            if not layers:
                raise VrpError(f"fsdp: {type(base).__name__} names no decoder layer class (`_no_split_modules`) to "
                               f"shard; use distributed_strategy ddp")
            for layer in layers:
                fully_shard(layer)
            self.engine = fully_shard(_loss_module(model))
            return
        from torch.nn.parallel import DistributedDataParallel

        params = inspect.signature(DistributedDataParallel.__init__).parameters
        kw: dict[str, Any] = {"init_sync": False} if "init_sync" in params else {}
        kw.update({"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False})
        self.engine = DistributedDataParallel(_loss_module(model), **kw)

    def seed_rank(self, seed: int) -> None:
        """Give ranks other than 0 their own torch RNG stream (LoRA dropout masks), a function of the seed and the
        rank; rank 0 keeps the one-process stream."""
        if self.active and self.rank > 0:
            import torch

            torch.manual_seed(seed * 1000003 + 7919 * self.rank)

    def full_adapter_state(self, model: Any) -> dict[str, Any] | None:
        """With FSDP: `{parameter name: full CPU tensor}` of the trainable (LoRA) weights on rank 0, None on the
        others (every rank must call it: the shards are gathered). Without FSDP: None (the model holds them)."""
        if self.strategy != "fsdp":
            return None
        from torch.distributed.tensor import DTensor

        out: dict[str, Any] = {}
        for name, p in model.named_parameters():
            if p.requires_grad:
                full = p.full_tensor() if isinstance(p, DTensor) else p
                if self.is_main:
                    out[name] = full.detach().cpu().clone()
        return out if self.is_main else None

    def adapter_view(self, model: Any) -> Any:
        """What to call `save_pretrained` on to write the standard PEFT adapter: `model`, or with FSDP a view that
        writes the gathered full weights (None on ranks other than 0). Every rank must call it."""
        state = self.full_adapter_state(model)
        if self.strategy != "fsdp":
            return model
        return _FullAdapter(model, state) if state is not None else None

    def full_optimizer_state(self, optimizer: Any) -> dict[str, Any] | None:
        """The optimizer's `state_dict()` with full tensors (FSDP gathers the sharded moments; every rank must call
        it) on rank 0, None on the others. Its layout is that of one process, whatever the world size."""
        sd = optimizer.state_dict()
        if self.strategy == "fsdp":
            from torch.distributed.tensor import DTensor

            sd = dict(sd, state={i: {k: (v.full_tensor().cpu() if isinstance(v, DTensor) else v)
                                     for k, v in st.items()} for i, st in sorted(sd["state"].items())})
        return sd if self.is_main else None

    def load_optimizer_state(self, optimizer: Any, sd: dict[str, Any]) -> None:
        """Load a full (one-process layout) optimizer state into `optimizer`; with FSDP each rank keeps its shard of
        the moments (`distribute_tensor` like the parameter they belong to)."""
        if self.strategy == "fsdp":
            from torch.distributed.tensor import DTensor, distribute_tensor

            params = [p for g in optimizer.param_groups for p in g["params"]]
            state = {}
            for i, st in sd["state"].items():
                p = params[int(i)]
                state[i] = {k: (distribute_tensor(v.to(p.device_mesh.device_type), p.device_mesh, p.placements)
                                if isinstance(p, DTensor) and hasattr(v, "shape") and v.shape == p.shape else v)
                            for k, v in st.items()}
            sd = dict(sd, state=state)
        optimizer.load_state_dict(sd)



def _destroy_group() -> None:
    """Destroy the default process group at interpreter exit (registered by `start` when it created it)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def start(strategy: str, quantization: str, device: str) -> Dist:
    """This process's `Dist`: one process (`Dist(device=device)`) unless a launcher started it (`detect_launch`)
    or a process group exists; then the group is created (`env://`; NCCL on CUDA after selecting GPU `LOCAL_RANK`,
    gloo on a CPU) or joined. device: the resolved `cpu` / `cuda`. Raises ConfigError for a bad strategy, VrpError
    for a broken launcher environment or a GPU index this machine does not have."""
    import torch
    import torch.distributed as dist

    existing = dist.is_available() and dist.is_initialized()
    launch = detect_launch()
    if launch is None and not existing:
        return Dist(device=device)
    name = resolve_strategy(strategy, quantization)
    if existing:
        rank, world = dist.get_rank(), dist.get_world_size()
        local = launch.local_rank if launch is not None and launch.rank == rank else rank
    else:
        assert launch is not None
        rank, world, local = launch.rank, launch.world_size, launch.local_rank
    if device == "cuda":
        if local >= torch.cuda.device_count():
            raise VrpError(f"local rank {local} has no GPU: this machine has {torch.cuda.device_count()}; start at "
                           f"most that many processes per node")
        torch.cuda.set_device(local)
    if not existing:
        missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
        if missing:
            raise VrpError(f"distributed launch without {' and '.join(missing)}: start vrp with torchrun or "
                           f"accelerate launch, which set them")
        dist.init_process_group("nccl" if device == "cuda" else "gloo", rank=rank, world_size=world)
        # kept for the rest of the process (a second run joins it: a group created again from torchrun's store
        # would read the first group's stale addresses) and destroyed at exit
        atexit.register(_destroy_group)
    return Dist(rank, world, local, name, device, owns_group=not existing)
