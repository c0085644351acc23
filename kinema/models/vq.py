"""Vector quantisation: a codebook of K vectors; every input vector is replaced by its nearest code.

The quantiser of a VQ-VAE (van den Oord et al. 2017, "Neural Discrete Representation Learning"):
nearest code by squared L2 distance, straight-through gradients to the encoder, and the
commitment loss ``beta * |z - sg(e)|^2`` (beta 0.25 as in the paper).

How the codebook stays in use:

- **EMA codebook** (the paper's appendix; Razavi et al. 2019, VQ-VAE-2): with ``ema=True`` the
  codes are buffers, not parameters. Per code, the count ``N_k`` and the sum ``m_k`` of the vectors
  assigned to it are exponential moving averages (``decay`` 0.99), the counts are Laplace-smoothed
  (``eps``) so that no code divides by zero, and ``e_k = m_k / N_k``. The codebook loss
  ``|sg(z) - e|^2`` is then reported but trains nothing. With ``ema=False`` the codebook is a
  parameter trained by that loss (the paper's main method).
- **Dead-code restart** (Dhariwal et al. 2020, Jukebox): a code no vector was assigned to for
  ``restart_after`` consecutive updates is re-seeded at one of the current encoder outputs. The
  outputs are drawn with probability proportional to their squared distance to their nearest code
  (the k-means++ rule), so restarts go where the quantisation error is, not to the plain
  background every clip is mostly made of.
- **Data-dependent init**: the first update seeds the whole codebook from the encoder outputs by
  k-means++ (Arthur & Vassilvitskii 2007) instead of keeping the random init.

Updates happen in :meth:`VectorQuantizer.update_codebook`, called once per optimiser step with the
step's assignments and a ``torch.Generator`` (kinema's loop derives it from (seed, step)): each
``forward`` returns its :class:`Assignments` in its info and keeps nothing; the caller collects
those of the step's micro-batches and passes them in, so the codebook moves once per optimiser step
however many micro-batches the step has, and every random draw comes from that generator. All
statistics are registered buffers, so a checkpoint holds them and a resumed run continues
bit-exactly.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import KinemaError

DISTANCE_CHUNK_ELEMENTS = 1 << 22  # entries of the (rows x K) distance block computed at once (16 MiB in fp32)
DRAW_FLOOR = 1e-20  # added to k-means++ weights: every candidate stays drawable when all distances are 0


class Assignments(NamedTuple):
    """What one :meth:`VectorQuantizer.forward` assigned, for :meth:`VectorQuantizer.update_codebook`
    (no gradients): ``indices`` (N,) int64 code of each input vector, ``vectors`` (N, D) float32 the
    input vectors, ``distances`` (N,) float32 squared distance of each to its code."""

    indices: torch.Tensor
    vectors: torch.Tensor
    distances: torch.Tensor


class VectorQuantizer(nn.Module):
    """A codebook quantiser with EMA updates, dead-code restart and k-means++ init.

    Args:
        codebook_size: K, the number of codes (token ids 0 .. K-1).
        dim: D, the width of a code (the channel dimension of the input).
        beta: weight of the commitment loss ``|z - sg(e)|^2``.
        ema: keep the codebook by exponential moving averages (True) or train it as a parameter
            with the codebook loss ``|sg(z) - e|^2`` (False).
        decay: EMA decay of the code counts and sums (ema only).
        eps: Laplace smoothing of the EMA counts (ema only).
        restart_after: re-seed a code after this many consecutive updates without an assignment
            (0 disables restarts).

    State (all in the state dict): ``codebook`` (K, D) float32; with ema, ``cluster_size`` (K,)
    and ``embed_sum`` (K, D), the EMA counts and sums; ``unused_steps`` (K,) int64, updates since
    each code was last assigned; ``initialized`` (), whether k-means++ has seeded the codebook.
    """

    def __init__(
        self,
        codebook_size: int,
        dim: int,
        beta: float = 0.25,
        ema: bool = True,
        decay: float = 0.99,
        eps: float = 1e-5,
        restart_after: int = 100,
    ) -> None:
        super().__init__()
        if codebook_size < 1 or dim < 1:
            raise KinemaError(f"codebook_size and dim must be >= 1; got {codebook_size} and {dim}")
        if not 0.0 < decay < 1.0:
            raise KinemaError(f"codebook decay must be in (0, 1); got {decay}")
        if restart_after < 0:
            raise KinemaError(f"restart_after must be >= 0 (0 disables restarts); got {restart_after}")
        self.codebook_size, self.dim = codebook_size, dim
        self.beta, self.ema, self.decay, self.eps, self.restart_after = beta, ema, decay, eps, restart_after
        codebook = torch.randn(codebook_size, dim)  # replaced by k-means++ at the first update
        if ema:
            self.register_buffer("codebook", codebook)
            self.register_buffer("cluster_size", torch.ones(codebook_size))
            self.register_buffer("embed_sum", codebook.clone())
        else:
            self.codebook = nn.Parameter(codebook)
        self.register_buffer("unused_steps", torch.zeros(codebook_size, dtype=torch.long))
        self.register_buffer("initialized", torch.tensor(False))

    frozen = False  # set by freeze(): the codebook stays as it is (no EMA step, no restarts)

    def freeze(self) -> None:
        """Keep the codebook exactly as it is from now on: :meth:`update_codebook` moves nothing,
        and without ema its gradient is off. A trained tokenizer's ids then mean the same codes
        (a decoder fine-tune under a token model trained on those ids); a codebook never seeded
        raises at the first update."""
        self.frozen = True
        if not self.ema:
            self.codebook.requires_grad_(False)

    def extra_repr(self) -> str:
        return f"codebook_size={self.codebook_size}, dim={self.dim}, beta={self.beta}, ema={self.ema}, restart_after={self.restart_after}"

    # -- lookup ---------------------------------------------------------------------------------
    @torch.no_grad()
    def nearest(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Nearest code of each row: x (N, D) -> indices (N,) int64 and squared distances (N,) float32.

        ``|x - e|^2 = |x|^2 - 2 x.e + |e|^2``, computed in float32 over blocks of rows so that at
        most :data:`DISTANCE_CHUNK_ELEMENTS` distances exist at a time. Ties go to the lower index.
        """
        e = self.codebook.detach().float()  # (K, D)
        e_sq = e.square().sum(1)  # (K,)
        x = x.detach().float()
        rows = max(1, DISTANCE_CHUNK_ELEMENTS // self.codebook_size)
        indices, dists = [], []
        with torch.autocast(x.device.type, enabled=False):
            for xc in x.split(rows):
                d = torch.addmm(e_sq, xc, e.t(), alpha=-2.0)  # (n, K): |e|^2 - 2 x.e
                m, i = d.min(dim=1)  # (n,), (n,)
                indices.append(i)
                dists.append((m + xc.square().sum(1)).clamp_min(0.0))
        if not indices:
            return x.new_zeros(0, dtype=torch.long), x.new_zeros(0)
        return torch.cat(indices), torch.cat(dists)

    def _flat(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() < 2 or z.shape[1] != self.dim:
            raise KinemaError(f"quantiser input must be (B, {self.dim}, ...) with the code width on dim 1; got {tuple(z.shape)}")
        return z.movedim(1, -1).reshape(-1, self.dim)  # (N, D), N = B * prod(grid)

    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """Token ids only: z (B, D, *grid) -> (B, *grid) int64. Records nothing, no losses."""
        indices, _ = self.nearest(self._flat(z))  # (N,)
        return indices.view(z.shape[0], *z.shape[2:])

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Codes of token ids: (B, *grid) int64 -> (B, D, *grid) float32."""
        if indices.dtype not in (torch.int64, torch.int32) or indices.dim() < 1:
            raise KinemaError(f"token ids must be an integer tensor (B, ...); got {indices.dtype} {tuple(indices.shape)}")
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.codebook_size):
            raise KinemaError(
                f"token ids must be in [0, {self.codebook_size}); got {int(indices.min())}..{int(indices.max())}"
            )
        return F.embedding(indices.long(), self.codebook.float()).movedim(-1, 1)  # (B, D, *grid)

    # -- quantising -----------------------------------------------------------------------------
    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Quantise z (B, D, *grid).

        Returns:
            z_q: (B, D, *grid) in z's dtype, the nearest codes, with the straight-through gradient
                (d z_q / d z = identity);
            indices: (B, *grid) int64 token ids;
            info: scalar tensors: ``loss`` (``beta * commitment``, plus ``codebook`` without ema:
                add it to the training loss), ``commitment`` ``|z - sg(e)|^2`` and ``codebook``
                ``|sg(z) - e|^2`` (means over elements), ``perplexity`` (exp of the entropy of the
                code histogram of this batch) and ``usage`` (fraction of codes used in this batch);
                and ``assignments``, this batch's :class:`Assignments` (detached), for a training
                loop to pass to :meth:`update_codebook`. Nothing is kept in the module.
        """
        flat = self._flat(z)  # (N, D)
        indices, dist = self.nearest(flat)  # (N,), (N,)
        with torch.autocast(z.device.type, enabled=False):
            x = flat.float()  # (N, D)
            q = F.embedding(indices, self.codebook.float())  # (N, D), grad to the codebook without ema
            commitment = F.mse_loss(x, q.detach())
            codebook_loss = F.mse_loss(x.detach(), q)
            loss = self.beta * commitment if self.ema else self.beta * commitment + codebook_loss
            counts = torch.bincount(indices, minlength=self.codebook_size).float()  # (K,)
        z_q = q.detach().to(z.dtype).view(z.shape[0], *z.shape[2:], self.dim).movedim(-1, 1)  # (B, D, *grid)
        z_q = z + (z_q - z).detach()  # straight-through: the decoder's gradient goes to the encoder
        info = {
            "loss": loss,
            "commitment": commitment.detach(),
            "codebook": codebook_loss.detach(),
            "perplexity": perplexity(counts),
            "usage": (counts > 0).float().mean(),
            "assignments": Assignments(indices, x.detach(), dist),
        }
        return z_q, indices.view(z.shape[0], *z.shape[2:]), info

    # -- keeping the codebook in use ------------------------------------------------------------
    @torch.no_grad()
    def init_from_samples(self, samples: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """Seed the codebook with k-means++ over ``samples`` (N, D) and reset the statistics.

        Each code is a sample drawn with probability proportional to its squared distance to the
        codes chosen so far (uniformly when all are 0: fewer distinct samples than codes). Draws
        run on the CPU from ``generator`` (default: a generator seeded 0).
        """
        x = samples.detach().float().reshape(-1, self.dim).cpu()  # (N, D)
        if x.shape[0] == 0:
            raise KinemaError("init_from_samples needs at least one sample vector")
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        chosen = torch.empty(self.codebook_size, dtype=torch.long)
        chosen[0] = torch.randint(x.shape[0], (), generator=g)
        d = (x - x[chosen[0]]).square().sum(1)  # (N,) squared distance to the nearest chosen code
        for k in range(1, self.codebook_size):
            chosen[k] = torch.multinomial(d + DRAW_FLOOR, 1, generator=g)[0]
            d = torch.minimum(d, (x - x[chosen[k]]).square().sum(1))
        self._set_codes(torch.arange(self.codebook_size, device=self.codebook.device), x[chosen])
        self.unused_steps.zero_()
        self.initialized.fill_(True)

    def _set_codes(self, which: torch.Tensor, vectors: torch.Tensor) -> None:
        """Put ``vectors`` (n, D) at codes ``which`` (n,), with EMA statistics of one assignment each."""
        vectors = vectors.to(device=self.codebook.device, dtype=self.codebook.dtype)
        self.codebook.data[which] = vectors
        if self.ema:
            self.cluster_size[which] = 1.0
            self.embed_sum[which] = vectors

    @torch.no_grad()
    def update_codebook(self, records: Sequence[Assignments], generator: torch.Generator) -> dict[str, float]:
        """Apply one optimiser step's assignments: one EMA step, then dead-code restarts.

        The first call with assignments seeds the codebook by k-means++ from their vectors instead
        (:meth:`init_from_samples`). Call once per optimiser step.

        Args:
            records: the ``info["assignments"]`` of the step's training forwards, in order.
            generator: a CPU generator; it makes the draws.
        Returns:
            the step's codebook use as floats: ``perplexity`` and ``codes_used`` (fraction of codes
            assigned) over all the vectors, and ``codes_restarted`` (the number re-seeded); empty
            when ``records`` is empty.
        """
        if not records:
            return {}
        indices, x, dist = (torch.cat(parts) for parts in zip(*records))  # (N,), (N, D), (N,)
        counts = torch.bincount(indices, minlength=self.codebook_size).float()  # (K,)
        stats = {"perplexity": float(perplexity(counts)), "codes_used": float((counts > 0).float().mean()), "codes_restarted": 0.0}
        if self.frozen:
            if not bool(self.initialized):
                raise KinemaError("freeze: the quantizer's codebook was never trained (nothing seeded it); start from a trained tokenizer (init_from) or leave quantizer out of freeze")
            return stats
        if not bool(self.initialized):
            self.init_from_samples(x, generator)
            return stats
        if self.ema:
            sums = torch.zeros_like(self.embed_sum).index_add_(0, indices, x)  # (K, D)
            self.cluster_size.lerp_(counts, 1.0 - self.decay)
            self.embed_sum.lerp_(sums, 1.0 - self.decay)
            n = self.cluster_size.sum()
            smoothed = (self.cluster_size + self.eps) / (n + self.codebook_size * self.eps) * n  # (K,) Laplace
            self.codebook.copy_(self.embed_sum / smoothed[:, None])
        self.unused_steps.add_(1).masked_fill_(counts > 0, 0)
        if self.restart_after > 0:
            dead = (self.unused_steps >= self.restart_after).nonzero().squeeze(1)  # (n_dead,)
            if dead.numel():
                weights = dist.float().cpu() + DRAW_FLOOR  # (N,) k-means++: far from every code = likelier
                pick = torch.multinomial(weights, dead.numel(), replacement=dead.numel() > weights.numel(), generator=generator)
                self._set_codes(dead, x[pick.to(x.device)])
                self.unused_steps[dead] = 0
                stats["codes_restarted"] = float(dead.numel())
        return stats


def perplexity(counts: torch.Tensor) -> torch.Tensor:
    """exp(entropy) of a code histogram (K,): the number of equally used codes it is worth (a scalar)."""
    total = counts.sum()
    if total <= 0:
        return counts.new_tensor(0.0)
    p = counts / total
    return torch.exp(-(p * torch.log(p.clamp_min(torch.finfo(p.dtype).tiny))).sum())
