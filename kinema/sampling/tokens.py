"""Sampling rules for token models: pure functions of a ``(B, V)`` row of logits per sequence.

One decoding step of an autoregressive video token model reads::

    rule = TokenSampling(temperature=0.9, top_k=256, guidance_scale=3.0)
    logits = guided_logits(model(ids, cond), model(ids, uncond), rule.guidance_scale)  # (B, V)
    next_ids = sample_tokens(logits, rule, generator)                                 # (B,)

The filters keep the semantics of Hugging Face transformers' warpers (``TemperatureLogitsWarper``,
``TopKLogitsWarper``, ``TopPLogitsWarper``, ``TypicalLogitsWarper``, with the default
``min_tokens_to_keep=1``) and are applied in the order ``generate`` applies them: temperature ->
top-k -> top-p -> typical. Removed tokens get ``-inf``. A no-op setting returns the input tensor
itself, so an unfiltered step costs nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from ..errors import KinemaError, RequestError
from ..schema import quoted

if TYPE_CHECKING:
    from ..models.token_ar import TokenAR, TokenARCache

__all__ = [
    "TokenSampling",
    "apply_temperature",
    "filter_logits",
    "generate",
    "guided_logits",
    "new_generation_cache",
    "sample_tokens",
    "token_picker",
    "top_k_filter",
    "top_p_filter",
    "typical_filter",
]


# ------------------------------------------------------------------------------------------------
# Filters
# ------------------------------------------------------------------------------------------------
def apply_temperature(logits: Tensor, temperature: float) -> Tensor:
    """``logits / temperature``; 1 returns ``logits`` itself. Shape ``(B, V)`` (any ``(..., V)``).

    Temperature 0 (or None) means greedy decoding, which is the caller's job (``argmax``; see
    :func:`sample_tokens`), so it is refused here, as are negative and non-finite values.
    """
    _check_temperature(temperature, allow_greedy=False)
    if temperature == 1:
        return logits
    return logits / temperature


def top_k_filter(logits: Tensor, k: int | None) -> Tensor:
    """Keep the ``k`` largest logits of each row, set the rest to ``-inf``. Shape ``(B, V)``.

    As transformers' ``TopKLogitsWarper``: a token tied with the k-th largest value is kept too, so
    a row with ties at the boundary keeps more than ``k``. ``k`` of 0 or None, or ``k >= V``, returns
    ``logits`` itself.
    """
    _check_top_k(k)
    if not k or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, -math.inf)


def top_p_filter(logits: Tensor, p: float | None) -> Tensor:
    """Nucleus filter: keep the smallest set of most probable tokens whose probability mass reaches
    ``p`` (always at least the most probable one); the rest get ``-inf``. Shape ``(B, V)``.

    Computed as transformers' ``TopPLogitsWarper``: sort ascending and drop the tokens whose
    cumulative mass is ``<= 1 - p`` (the same set: the mass above a kept token is ``< p``). ``p`` of
    1 or None returns ``logits`` itself.
    """
    _check_mass("top_p", p)
    if p is None or p == 1:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=False)  # (B, V) each
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)  # (B, V), ascending to 1
    remove_sorted = cumulative <= (1 - p)
    remove_sorted[..., -1:] = False  # the most probable token always stays
    remove = remove_sorted.scatter(-1, order, remove_sorted)  # (B, V), back in vocabulary order
    return logits.masked_fill(remove, -math.inf)


def typical_filter(logits: Tensor, p: float | None) -> Tensor:
    """Locally typical filter (Meister et al. 2022, "Typical Decoding for Natural Language Generation";
    transformers' ``TypicalLogitsWarper``). Shape ``(B, V)``.

    Tokens are ranked by how far their surprisal ``-log p(v)`` lies from the row's entropy
    ``H = -sum p log p``; the smallest such prefix whose probability mass reaches ``p`` is kept
    (at least one token, the most typical one, which need not be the most probable), the rest get
    ``-inf``. ``p`` of 1 or None returns ``logits`` itself.
    """
    _check_mass("typical_p", p)
    if p is None or p == 1:
        return logits
    log_probs = F.log_softmax(logits, dim=-1)  # (B, V)
    entropy = -(log_probs * log_probs.exp()).nansum(dim=-1, keepdim=True)  # (B, 1); nansum: 0 * -inf
    distance = (-log_probs - entropy).abs()  # (B, V)
    sorted_distance, order = torch.sort(distance, dim=-1, descending=False)  # (B, V) each
    cumulative = logits.gather(-1, order).softmax(dim=-1).cumsum(dim=-1)  # (B, V), most typical first
    last = (cumulative < p).sum(dim=-1, keepdim=True).clamp_(max=logits.shape[-1] - 1)  # (B, 1)
    remove_sorted = sorted_distance > sorted_distance.gather(-1, last)  # (B, V)
    remove_sorted[..., :1] = False  # the most typical token always stays
    remove = remove_sorted.scatter(-1, order, remove_sorted)  # (B, V), back in vocabulary order
    return logits.masked_fill(remove, -math.inf)


# ------------------------------------------------------------------------------------------------
# Guidance
# ------------------------------------------------------------------------------------------------
def guided_logits(cond: Tensor, uncond: Tensor, guidance_scale: float) -> Tensor:
    """Classifier-free guidance for a token model: ``u + g * (c - u)`` on log-probabilities.

    ``c = log_softmax(cond)`` and ``u = log_softmax(uncond)``, in float32 (as transformers'
    ``UnbatchedClassifierFreeGuidanceLogitsProcessor`` and Sanchez et al. 2023, "Stay on topic with
    classifier-free guidance"). Each model pass adds its own arbitrary per-row constant to its logits;
    since the formula is affine with weights summing to 1 the sampled distribution would be the same on
    raw logits, but normalising first removes those constants before they are scaled by ``g``, which
    keeps the values in range (large offsets times ``g`` would eat float32 precision) and makes the
    result the same whatever the offsets. The result is unnormalised log-probabilities; feed it to
    :func:`sample_tokens` like logits.

    Args:
        cond: ``(B, V)`` logits with the prompt.
        uncond: ``(B, V)`` logits without it (or with the negative prompt).
        guidance_scale: ``g``; 1 returns ``cond`` itself (no unconditional pass needed), 0 the
            unconditional log-probabilities.

    Returns:
        ``(B, V)`` float32. A token masked (``-inf``) in either input stays ``-inf`` (the formula
        would give NaN or ``+inf`` there).
    """
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) or not math.isfinite(guidance_scale):
        raise KinemaError(f"guidance_scale must be a finite number (1 means no guidance); got {guidance_scale!r}")
    if cond.shape != uncond.shape:
        raise KinemaError(
            f"conditional and unconditional logits must have the same shape; got {tuple(cond.shape)} and {tuple(uncond.shape)}"
        )
    if guidance_scale == 1:
        return cond
    c = F.log_softmax(cond.float(), dim=-1)  # (B, V)
    u = F.log_softmax(uncond.float(), dim=-1)  # (B, V)
    guided = u + guidance_scale * (c - u)  # (B, V)
    return guided.masked_fill(c.isneginf() | u.isneginf(), -math.inf)


# ------------------------------------------------------------------------------------------------
# The rule and the sampler
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TokenSampling:
    """How the next token is chosen from the model's logits: a small immutable value.

    ``guidance_scale`` is carried here for the pipeline (it decides whether an unconditional pass
    is run and feeds :func:`guided_logits`); :func:`sample_tokens` sees one set of logits and does
    not apply it.
    """

    temperature: float | None = 1.0  # 0 (or None, stored as 0.0): greedy, argmax of the raw logits
    top_k: int | None = None  # keep the k most probable tokens; None or 0: off
    top_p: float | None = None  # nucleus mass in (0, 1]; None or 1: off
    typical_p: float | None = None  # locally typical mass in (0, 1]; None or 1: off
    guidance_scale: float = 1.0  # classifier-free guidance on log-probs; 1: off

    def __post_init__(self) -> None:
        _check_temperature(self.temperature, allow_greedy=True)
        _check_top_k(self.top_k)
        _check_mass("top_p", self.top_p)
        _check_mass("typical_p", self.typical_p)
        g = self.guidance_scale
        if isinstance(g, bool) or not isinstance(g, (int, float)) or not math.isfinite(g):
            raise KinemaError(f"guidance_scale must be a finite number (1 means no guidance); got {g!r}")
        object.__setattr__(self, "temperature", 0.0 if self.temperature is None else float(self.temperature))
        object.__setattr__(self, "guidance_scale", float(g))

    @property
    def greedy(self) -> bool:
        """Temperature 0: take the argmax (the filters are then ignored, as in ``do_sample=False``)."""
        return self.temperature == 0

    @property
    def uses_guidance(self) -> bool:
        """Whether the pipeline must run the unconditional pass (``guidance_scale != 1``)."""
        return self.guidance_scale != 1


def filter_logits(logits: Tensor, rule: TokenSampling) -> Tensor:
    """The sampling distribution's logits: float32, ``temperature -> top-k -> top-p -> typical``.

    Args:
        logits: ``(B, V)`` next-token logits (any float dtype).
        rule: a non-greedy :class:`TokenSampling`.

    Returns:
        ``(B, V)`` float32 with removed tokens at ``-inf``.
    """
    if rule.greedy:
        raise KinemaError("a greedy rule (temperature 0) has no sampling distribution; use sample_tokens, which takes the argmax")
    x = apply_temperature(logits.float(), rule.temperature)  # (B, V)
    x = top_k_filter(x, rule.top_k)
    x = top_p_filter(x, rule.top_p)
    return typical_filter(x, rule.typical_p)


def sample_tokens(logits: Tensor, rule: TokenSampling, generator: torch.Generator | None = None) -> Tensor:
    """Draw one token per row of ``logits`` under ``rule``.

    Greedy (``argmax`` of the raw logits) when ``rule.temperature == 0``; otherwise
    :func:`filter_logits`, softmax and ``torch.multinomial`` with ``generator`` (the same seed gives
    the same tokens on the same device). Guidance is not applied here: pass :func:`guided_logits`.

    Args:
        logits: ``(B, V)`` next-token logits.
        rule: the sampling settings.
        generator: a ``torch.Generator`` on ``logits``' device, or None for the global one.

    Returns:
        ``(B,)`` int64 token ids.
    """
    if logits.ndim != 2:
        raise KinemaError(
            f"sample_tokens takes (batch, vocab) logits; got shape {tuple(logits.shape)}: pass the last position's, logits[:, -1]"
        )
    if rule.greedy:
        return logits.argmax(dim=-1)  # (B,)
    probs = filter_logits(logits, rule).softmax(dim=-1)  # (B, V)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)  # (B, 1) -> (B,)


def token_picker(
    rule: TokenSampling, generators: torch.Generator | list[torch.Generator] | None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The ``pick`` of :func:`generate`: logits (B, V) -> ids (B,) under ``rule``, drawing with the
    generator (on its device; the same seed gives the same tokens), or row b with ``generators[b]``
    for a list. Logits that are NaN or infinite everywhere (a model with broken weights) are a
    one-line KinemaError rather than a sampler's crash."""

    def pick(logits: torch.Tensor) -> torch.Tensor:
        if not bool(torch.isfinite(logits).any(dim=-1).all()) or bool(torch.isnan(logits).any()):
            raise KinemaError(
                "the token model produced NaN or infinite logits: its weights may be corrupt; try float32 (--dtype float32)"
            )
        if rule.greedy:
            return sample_tokens(logits, rule)  # (B,) argmax: no draw
        if isinstance(generators, list):
            rows: Iterable[torch.Tensor] = (
                sample_tokens(logits[b : b + 1].to(g.device), rule, g) for b, g in enumerate(generators)
            )  # (1,) each
            return torch.cat(list(rows)).to(logits.device)  # (B,)
        device = generators.device if generators is not None else logits.device
        return sample_tokens(logits.to(device), rule, generators).to(logits.device)  # (B,)

    return pick


# ------------------------------------------------------------------------------------------------
# Generation: frame by frame, token by token, with the model's KV cache
# ------------------------------------------------------------------------------------------------
Pick = Callable[[torch.Tensor], torch.Tensor]  # logits (B, V) -> token ids (B,) long
Guidance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (cond logits, uncond logits) (B, V) each -> (B, V)


@torch.no_grad()
def generate(
    model: "TokenAR",
    text: torch.Tensor,
    text_mask: torch.Tensor | None,
    num_frames: int,
    pick: Pick,
    *,
    uncond_text: torch.Tensor | None = None,
    uncond_mask: torch.Tensor | None = None,
    guidance: Guidance | None = None,
    use_cache: bool = True,
    progress: bool = False,
    on_frame: Callable[[int], None] | None = None,
    prefix: torch.Tensor | None = None,
    cache: "TokenARCache | None" = None,
) -> torch.Tensor:
    """Generate a clip's tokens, frame by frame and token by token.

    Args:
        model: the token model (in eval mode).
        text: (B, L, text_dim) text states of the prompts.
        text_mask: (B, L) True for text tokens, False for padding; None: no padding.
        num_frames: frames to generate (>= 1).
        pick: the sampling rule, logits (B, vocab) -> ids (B,) long (argmax, top-k, nucleus, ...).
        uncond_text: (B, L', text_dim) states of the negative / empty prompt, for classifier-free
            guidance (with ``guidance``); cond and uncond run as one batch of 2B.
        uncond_mask: (B, L') mask of uncond_text; None: no padding.
        guidance: ``(cond_logits, uncond_logits) -> logits``, each (B, vocab), e.g.
            ``lambda c, u: cfg(u, c, 3.0)``; needs uncond_text.
        use_cache: decode with a :class:`TokenARCache` (True), or recompute ``forward`` over the
            whole clip so far for every token (the reference; from frame 0, since stacked windows
            see ``config.receptive_frames`` back).
        progress: show a tqdm bar, one tick per frame.
        on_frame: called with the number of frames done after each frame (a pipeline's progress
            report; raising from it stops the generation).
        prefix: (B, P, h, w) long token ids of frames that are given, not sampled (extending a
            clip): they fill the first P frames and the KV cache exactly as if the model had made
            them, and ``num_frames`` more are generated after them. With greedy picking, P frames
            then more continue a clip exactly as one call of P + more frames would.
        cache: a KV cache to go on with (from :func:`new_generation_cache`, for the same batch and
            guidance), kept by the caller between calls: a long video whose prompt changes. It has
            consumed the first ``cache.position`` tokens of ``prefix`` (those of earlier calls, each
            under the text it was made with; 0 for a new cache); this call reads its own text from
            here on, feeds the rest of the prefix and generates after it. The caller's object is
            advanced in place. None: a new cache for this call alone.

    Returns:
        (B, num_frames, h, w) long token ids (the prefix's frames first when given, then the
        ``num_frames`` new ones: (B, P + num_frames, h, w)).
    """
    c = model.config
    if not isinstance(num_frames, int) or num_frames < 1:
        raise KinemaError(f"num_frames must be a positive integer; got {num_frames!r}")
    if (uncond_text is None) != (guidance is None):
        raise KinemaError("classifier-free guidance needs both uncond_text and guidance (or neither)")
    b, hw = text.shape[0], c.tokens_per_frame
    if uncond_text is not None:
        if uncond_text.shape[0] != b:
            raise KinemaError(f"uncond_text has batch {uncond_text.shape[0]}; expected {b}, one per prompt")
        text, text_mask = _concat_text(text, text_mask, uncond_text, uncond_mask)  # (2B, L, text_dim), (2B, L)
    prepared = model.prepare_text(text, text_mask)
    device = prepared.kv[0][0].device
    given = 0
    if prefix is not None:
        if not isinstance(prefix, torch.Tensor) or prefix.dtype != torch.long or prefix.ndim != 4 or prefix.shape[0] != b or tuple(prefix.shape[2:]) != tuple(c.grid):
            got = f"{tuple(prefix.shape)} {prefix.dtype}" if isinstance(prefix, torch.Tensor) else type(prefix).__name__
            raise KinemaError(f"prefix must be (B, P, h, w) = ({b}, P, {c.grid[0]}, {c.grid[1]}) torch.long token ids; got {got}")
        if int(prefix.min()) < 0 or int(prefix.max()) >= c.vocab_size:
            raise KinemaError(f"prefix ids must be in [0, {c.vocab_size}); got {int(prefix.min())} to {int(prefix.max())}")
        given = prefix.shape[1]
        num_frames = given + num_frames
    out = torch.zeros(b, num_frames * hw, dtype=torch.long, device=device)  # (B, N)
    if given:
        out[:, : given * hw] = rearrange(prefix.to(device), "b f h w -> b (f h w)")  # the given frames, as if made
    if cache is None:
        cache = model.new_cache(prepared) if use_cache else None
    else:
        if not use_cache:
            raise KinemaError("a cache to go on with needs use_cache=True")
        if cache.batch_size != prepared.batch_size or cache.position > given * hw:
            raise KinemaError(
                f"the cache to go on with holds a batch of {cache.batch_size} at token {cache.position}; this call has a batch of "
                f"{prepared.batch_size} (guidance doubles it) and {given * hw} given tokens"
            )
        cache.text = prepared  # a new prompt: what the cross-attention reads from here on

    def logits_at(p: int) -> torch.Tensor:
        """Logits (B, V) of position p, guided when asked."""
        if cache is not None:
            token = None if p == 0 else out[:, p - 1]  # (B,)
            if token is not None and guidance is not None:
                token = torch.cat([token, token])  # (2B,)
            logits = model.step(token, cache)  # (B or 2B, V)
        else:
            context = out[:, : p + 1]  # (B, p+1): token p is a placeholder, never read
            if guidance is not None:
                context = torch.cat([context, context])  # (2B, p+1)
            logits = model(context, prepared)[:, -1]  # (B or 2B, V)
        return logits if guidance is None else guidance(logits[:b], logits[b:])  # (B, V)

    from tqdm.auto import tqdm

    with tqdm(total=num_frames - given, desc="frames", unit="frame", disable=not progress, leave=False) as bar:
        if cache is not None:
            for p in range(cache.position, given * hw):  # the given frames into the cache: each token fed as its successor's input
                model.step(None if p == 0 else (out[:, p - 1] if guidance is None else torch.cat([out[:, p - 1]] * 2)), cache)
        for frame in range(given, num_frames):
            for p in range(frame * hw, (frame + 1) * hw):
                token = pick(logits_at(p))  # (B,)
                if not isinstance(token, torch.Tensor) or tuple(token.shape) != (b,) or token.dtype != torch.long:
                    got = f"{tuple(token.shape)} {token.dtype}" if isinstance(token, torch.Tensor) else type(token).__name__
                    raise KinemaError(f"pick must return (B,) = ({b},) torch.long ids; got {got}")
                out[:, p] = token
            bar.update(1)
            if on_frame is not None:
                on_frame(frame + 1 - given)
    return rearrange(out, "b (f h w) -> b f h w", f=num_frames, h=c.grid[0], w=c.grid[1])  # (B, F, h, w)


def new_generation_cache(
    model: "TokenAR",
    text: torch.Tensor,
    text_mask: torch.Tensor | None,
    *,
    uncond_text: torch.Tensor | None = None,
    uncond_mask: torch.Tensor | None = None,
) -> "TokenARCache":
    """An empty KV cache for :func:`generate` calls that go on from each other (``cache=``): the
    batch of ``text``, doubled with ``uncond_text`` for guidance. Its text is the first call's."""
    if uncond_text is not None:
        text, text_mask = _concat_text(text, text_mask, uncond_text, uncond_mask)
    return model.new_cache(model.prepare_text(text, text_mask))


def _concat_text(
    text: torch.Tensor, mask: torch.Tensor | None, other: torch.Tensor, other_mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Stack two batches of text states along the batch, padding the shorter to the longer with
    masked positions: (B, L1, C) + (B, L2, C) -> (2B, max L, C) and its (2B, max L) mask."""
    if mask is None and other_mask is None and text.shape[1] == other.shape[1]:
        return torch.cat([text, other]), None
    length = max(text.shape[1], other.shape[1])
    parts, masks = [], []
    for states, m in ((text, mask), (other, other_mask)):
        m = torch.ones(states.shape[:2], dtype=torch.bool, device=states.device) if m is None else m.to(torch.bool)  # (B, Li)
        parts.append(F.pad(states, (0, 0, 0, length - states.shape[1])))  # (B, L, C)
        masks.append(F.pad(m, (0, length - m.shape[1]), value=False))  # (B, L)
    return torch.cat(parts), torch.cat(masks)  # (2B, L, C), (2B, L)


# ------------------------------------------------------------------------------------------------
# Argument checks
# ------------------------------------------------------------------------------------------------
def _check_temperature(t: float | None, allow_greedy: bool) -> None:
    if allow_greedy and t is None:
        return
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
        raise RequestError(f"{{0}} must be a finite number >= 0 (0 means greedy decoding); got {quoted(t)}", "temperature")
    if t == 0 and not allow_greedy:
        raise KinemaError("temperature 0 means greedy decoding: take logits.argmax(-1) instead (sample_tokens does)")


def _check_top_k(k: int | None) -> None:
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 0):
        raise RequestError(f"{{0}} must be a whole number >= 0 (0 or None turns it off); got {quoted(k)}", "top_k")


def _check_mass(name: str, p: float | None) -> None:
    if p is not None and (isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1):
        raise RequestError(f"{{0}} must be a probability mass in (0, 1] (1 or None turns it off); got {quoted(p)}", name)
