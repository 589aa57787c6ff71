"""The MoCo-v2 module every method runs through: query encoder, momentum key encoder, queues.

``MoCo.forward`` computes one step's loss terms for the method's registry entry
(:mod:`student_trainer.train.methods`): InfoNCE when it uses contrast, plus its teacher loss
(``disco``: λ·DisCo MSE on both views; ``seed``: SEED's soft cross-entropy on both views). The
momentum update and the enqueue are separate calls so the training loop reads top to bottom. Nothing
here requires ``torch.distributed``; when a process group is initialised, keys are batch-shuffled
across ranks (MoCo's shuffle-BN) and queues receive the keys of every rank.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from student_trainer.train.losses import infonce_loss, symmetric_infonce_loss
from student_trainer.train.methods import DistillInputs, MethodSpec, get_method
from teacher_service.encoders import Encoder, ProjectionHead

__all__ = ["MoCo", "StepOutput", "concat_all_gather", "effective_queue_size", "world_size"]


def world_size() -> int:
    """Number of processes in the default group (1 without ``torch.distributed``)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def _rank() -> int:
    return dist.get_rank() if world_size() > 1 else 0


@torch.no_grad()
def concat_all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` ``(b, ...)`` from every rank in rank order -> ``(world*b, ...)``.

    Identity without a process group. No gradient flows through it.
    """
    if world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def effective_queue_size(requested: int, num_samples: int, global_batch: int) -> int:
    """Queue length actually used: ``min(requested, num_samples - global_batch)``, at least 1.

    Within an epoch every sample is seen once, so a queue of at most N - B keys never holds a key
    of an image in the current batch: a larger queue would contain each image's own older key as a
    negative, which only repeats samples (DESIGN §7).
    """
    return max(1, min(requested, num_samples - global_batch))


@dataclass
class StepOutput:
    """Result of one forward: ``loss`` (0-d, with grad), detached ``terms`` (name -> 0-d tensor),
    ``keys`` ``(b, D)`` to enqueue (or None) and ``teacher_keys`` ``(b, D)`` for SEED's queue."""

    loss: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    keys: torch.Tensor | None = None
    teacher_keys: torch.Tensor | None = None


class MoCo(nn.Module):
    """Query encoder + momentum key encoder + negative-key queue (+ SEED's teacher queue).

    ``method``: a name of ``student_trainer.train.methods.METHODS`` (its spec is ``self.spec``).
    ``queue_size``: K keys ``(K, D)``; ``teacher_queue_size``: the teacher-embedding queue length
    (methods with ``uses_teacher_queue`` only, i.e. SEED).
    ``temperature``: InfoNCE τ and SEED's student τ_s; ``distill_weight``: DisCo's λ;
    ``teacher_temperature``: SEED's τ_t; ``shuffle_keys``: shuffle the key batch (across ranks
    under DDP) before the key encoder so its BN statistics mix different images than the query's.
    ``symmetric``: each view is the query once and the key once (InfoNCE = the mean of both
    directions, :func:`~student_trainer.train.losses.symmetric_infonce_loss`) and the keys of *both*
    views are enqueued (as MoCo's symmetric CIFAR demo does: the queue holds keys of the same
    encoder states the loss used; it turns over twice as fast); SEED's loss already uses both views,
    so for it ``symmetric`` enqueues both views' teacher embeddings.
    """

    queue: torch.Tensor
    queue_ptr: torch.Tensor
    queue_count: torch.Tensor
    teacher_queue: torch.Tensor
    teacher_ptr: torch.Tensor
    teacher_count: torch.Tensor

    def __init__(
        self,
        encoder: Encoder,
        *,
        method: str,
        queue_size: int,
        teacher_queue_size: int = 1,
        temperature: float = 0.2,
        distill_weight: float = 8.0,
        teacher_temperature: float = 1e-4,
        shuffle_keys: bool = True,
        symmetric: bool = False,
        target_dims: tuple[int, ...] = (),
        target_weights: tuple[float, ...] = (),
        target_loss: str = "mse",
        teacher_drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.spec: MethodSpec = get_method(method)
        self.temperature = temperature
        self.distill_weight = distill_weight
        self.teacher_temperature = teacher_temperature
        self.shuffle_keys = shuffle_keys
        self.symmetric = symmetric
        self.query = encoder
        dim = encoder.embed_dim
        self.key: Encoder | None = None
        if self.spec.uses_contrast:
            self.key = copy.deepcopy(encoder)
            self.key.requires_grad_(False)
        self.register_buffer("queue", torch.zeros(queue_size, dim))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("queue_count", torch.zeros((), dtype=torch.long))
        tq = teacher_queue_size if self.spec.uses_teacher_queue else 1
        # several teachers: the queue holds their targets side by side (ΣD wide)
        self.register_buffer("teacher_queue", torch.zeros(tq, sum(target_dims) or dim))
        self.register_buffer("teacher_ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("teacher_count", torch.zeros((), dtype=torch.long))
        # Several teachers: one MLP head per teacher on the query backbone's feature (the key
        # encoder, the queue and the export never see them).
        self.target_heads = nn.ModuleList(
            ProjectionHead(
                encoder.feature_dim,
                encoder.config.head_hidden,
                d,
                bn=encoder.config.head_bn,
                bn_groups=encoder.config.bn_groups,
            )
            for d in target_dims
        )
        edges = [0]
        for d in target_dims:
            edges.append(edges[-1] + int(d))
        self.segments = tuple((edges[i], edges[i + 1]) for i in range(len(target_dims)))
        self.target_weights = tuple(float(w) for w in target_weights) or (1.0,) * len(target_dims)
        if len(self.target_weights) != len(target_dims):
            raise ValueError("one weight per teacher head")
        self.target_loss = target_loss
        self.teacher_drop = teacher_drop

    @torch.no_grad()
    def momentum_update(self, momentum: float) -> None:
        """``k <- m·k + (1 - m)·q`` for every parameter of the key encoder (no-op without one)."""
        if self.key is None:
            return
        for p_q, p_k in zip(self.query.parameters(), self.key.parameters(), strict=True):
            p_k.mul_(momentum).add_(p_q.detach(), alpha=1.0 - momentum)

    @torch.no_grad()
    def encode_keys(self, images: torch.Tensor, shuffle_seed: int) -> torch.Tensor:
        """Key embeddings ``(b, D)`` of ``images`` ``(b, 3, S, S)``, in input order.

        With ``shuffle_keys``, the global key batch is permuted by a generator seeded with
        ``shuffle_seed`` (identical on every rank, so no broadcast is needed), each rank encodes its
        slice of the permuted batch, and the result is gathered and unpermuted (MoCo's shuffle-BN;
        on one device it moves images between the head's BN groups).
        """
        assert self.key is not None
        if not self.shuffle_keys:
            out = self.key(images)
            assert isinstance(out, torch.Tensor)
            return out
        everything = concat_all_gather(images)
        n, b = everything.shape[0], images.shape[0]
        gen = torch.Generator().manual_seed(shuffle_seed)
        perm = torch.randperm(n, generator=gen).to(images.device)
        rank = _rank()
        mine = perm[rank * b : (rank + 1) * b]
        keys_mine = self.key(everything[mine])
        assert isinstance(keys_mine, torch.Tensor)
        keys_all = concat_all_gather(keys_mine)
        unshuffled = torch.empty_like(keys_all)
        unshuffled[perm] = keys_all
        return unshuffled[rank * b : (rank + 1) * b]

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor | None, teacher_keys: torch.Tensor | None = None) -> None:
        """Write ``keys`` ``(b, D)`` (gathered from all ranks) into the ring queue; the oldest go.

        ``teacher_keys`` ``(b, D)`` go into SEED's teacher queue the same way.
        """
        if keys is not None:
            self._ring_write(self.queue, self.queue_ptr, self.queue_count, concat_all_gather(keys))
        if teacher_keys is not None and self.spec.uses_teacher_queue:
            self._ring_write(
                self.teacher_queue,
                self.teacher_ptr,
                self.teacher_count,
                concat_all_gather(teacher_keys),
            )

    @staticmethod
    def _ring_write(
        queue: torch.Tensor, ptr: torch.Tensor, count: torch.Tensor, rows: torch.Tensor
    ) -> None:
        size = queue.shape[0]
        rows = rows[-size:].to(queue.dtype)
        n = rows.shape[0]
        start = int(ptr)
        idx = (torch.arange(n, device=queue.device) + start) % size
        queue[idx] = rows
        ptr.fill_((start + n) % size)
        count.fill_(min(size, int(count) + n))

    def queue_full(self) -> bool:
        """True when every queue this method uses holds real entries."""
        full = True
        if self.spec.uses_contrast:
            full = int(self.queue_count) >= self.queue.shape[0]
        if self.spec.uses_teacher_queue:
            full = full and int(self.teacher_count) >= self.teacher_queue.shape[0]
        return full

    def forward(
        self,
        view1: torch.Tensor,
        view2: torch.Tensor,
        target1: torch.Tensor | None = None,
        target2: torch.Tensor | None = None,
        shuffle_seed: int = 0,
    ) -> StepOutput:
        """One step's losses.

        ``view1``/``view2`` ``(b, 3, S, S) float32``: two views of the same b images (query, key).
        ``target1``/``target2`` ``(b, D) float32``: teacher embeddings of those views (disco/seed).
        Returns :class:`StepOutput`; ``terms`` holds "infonce" (contrast) and the teacher loss's
        terms ("distill" (λ-weighted) and "mse" for disco, "seed" for seed).
        """
        spec = self.spec
        terms: dict[str, torch.Tensor] = {}
        keys = None
        heads1: tuple[torch.Tensor, ...] = ()
        heads2: tuple[torch.Tensor, ...] = ()
        if len(self.target_heads):  # several teachers: their heads read the backbone feature
            f1, q1 = self.query(view1, output="both")
            f2, q2 = self.query(view2, output="both")
            heads1 = tuple(head(f1) for head in self.target_heads)
            heads2 = tuple(head(f2) for head in self.target_heads)
        else:
            q1 = self.query(view1)
            q2 = None
            if spec.distill is not None or (self.symmetric and spec.uses_contrast):
                q2 = self.query(view2)
        assert isinstance(q1, torch.Tensor)
        assert q2 is None or isinstance(q2, torch.Tensor)
        if spec.uses_contrast:
            keys = self.encode_keys(view2, shuffle_seed)
            if self.symmetric:
                assert q2 is not None
                k1 = self.encode_keys(view1, shuffle_seed)
                terms["infonce"] = symmetric_infonce_loss(
                    q1, q2, k1, keys, self.queue, self.temperature
                )
                keys = torch.cat([keys, k1])  # both views' keys go into the queue
            else:
                terms["infonce"] = infonce_loss(q1, keys, self.queue, self.temperature)
        if spec.distill is not None:
            if target1 is None or target2 is None:
                raise ValueError(f"method {spec.name!r} needs teacher targets for both views")
            assert q2 is not None
            uniform = None
            if heads1 and self.teacher_drop > 0:
                gen = torch.Generator().manual_seed(shuffle_seed ^ 0x5EED)
                uniform = torch.rand((2, view1.shape[0], len(heads1)), generator=gen)
            inputs = DistillInputs(
                q1, q2, target1, target2, self.teacher_queue,
                temperature=self.temperature,
                teacher_temperature=self.teacher_temperature,
                distill_weight=self.distill_weight,
                heads1=heads1, heads2=heads2, segments=self.segments,
                target_weights=self.target_weights, target_loss=self.target_loss,
                teacher_drop=self.teacher_drop, drop_uniform=uniform,
            )  # fmt: skip
            terms.update(spec.distill(inputs))
        total = view1.new_zeros(())
        for name in spec.loss_terms:
            total = total + terms[name]
        seed_keys = None
        if spec.uses_teacher_queue and target1 is not None:
            seed_keys = target1.detach()
            if self.symmetric and target2 is not None:
                seed_keys = torch.cat([seed_keys, target2.detach()])
        return StepOutput(
            loss=total,
            terms={k: v.detach() for k, v in terms.items()},
            keys=keys,
            teacher_keys=seed_keys,
        )
