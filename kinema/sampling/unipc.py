"""UniPC multistep for flow prediction (Wan 2.1's default solver), as stateless steps.

UniPC (Zhao et al. 2023, https://arxiv.org/abs/2302.04867) in its data-prediction form, for the
flow ``x = alpha * x0 + sigma * noise`` with ``alpha = 1 - sigma``. With the half log-SNR
``lambda = log(alpha / sigma)`` and ``h = lambda_t - lambda_s`` for a step ``s -> t``, the
exact ODE solution is ``x_t = (sigma_t / sigma_s) x_s + sigma_t * int_s^t e^lambda x0(lambda)``;
UniPC approximates ``x0(lambda)`` by a polynomial through the last ``p`` x0 estimates:

    x_t = (sigma_t / sigma_s) x_s - alpha_t (e^-h - 1) m_0 - alpha_t B(h) sum_k rho_k D_k

where ``m_0`` is the x0 estimate at ``s``, ``D_k = (m_k - m_0) / r_k`` are divided differences
with the estimates at earlier points ``s_k`` (``r_k = (lambda_{s_k} - lambda_s) / h``),
``B(h) = e^-h - 1`` ("bh2", diffusers' and Wan's default) or ``-h`` ("bh1"), and the ``rho``
solve the small Vandermonde system ``R rho = b`` whose right-hand side holds the phi-function
moments ``phi_{k+1}(-h) k! / B(h)``.

- UniP-p, the predictor, uses ``p - 1`` earlier estimates (for ``p = 2``: ``rho = 1/2``).
- UniC-p, the corrector, runs once the model has been evaluated at the predicted ``x_t``: it
  redoes the last step from the same ``x_s`` with the new estimate at ``t`` as one more point,
  raising the order by one at no extra model call. The corrected sample becomes the base of the
  next predictor; the model output at the *uncorrected* sample is reused as is.

Order is warmed up (step ``i`` uses at most ``i + 1`` points) and, with ``lower_order_final``,
lowered near the end (at most ``steps - i``), so the last step into ``sigma = 0`` is first order:
there ``lambda = +inf``, ``e^-h - 1 = -1``, and the update returns the x0 estimate exactly.

Everything a step needs from the past is in :class:`UniPCState`, an immutable value the caller
threads through; the step count is the ``index`` argument. The scalar coefficients are computed
as float32 scalars in the same order of operations as diffusers' ``UniPCMultistepScheduler``
(``prediction_type="flow_prediction"``, ``use_flow_sigmas=True``, ``predict_x0=True``), so a
float32 trajectory reproduces diffusers' to the last bit for orders 1 and 2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch
from torch import Tensor

from ..errors import KinemaError
from .noise import FlowMatching, NoiseProcess
from .schedules import Schedule, check_step_index, unipc_flow_schedule

FLOW = FlowMatching()

SolverType = Literal["bh1", "bh2"]


@dataclass(frozen=True)
class UniPCState:
    """What a UniPC step carries to the next one. Never mutated; each step returns a new one.

    Attributes:
        x0_history: x0 estimates of the last ``<= order`` steps, oldest first; the last one is
            at ``sigmas[last_index]``, the one before at ``sigmas[last_index - 1]``, ...
        last_sample: the (corrected) sample the last predictor started from, at
            ``sigmas[last_index]``; ``None`` before the first step.
        last_order: the order of the last predictor (the corrector repeats it); 0 at the start.
        last_index: the step that produced this state; ``None`` for a fresh state, which may start
            at any step.
    """

    x0_history: tuple[Tensor, ...] = ()
    last_sample: Tensor | None = None
    last_order: int = 0
    last_index: int | None = None


def _half_log_snr(level: Tensor, process: NoiseProcess) -> Tensor:
    """``lambda = log(alpha) - log(sigma)`` of the process at ``level`` (flow matching: ``alpha =
    1 - sigma``; ``+inf`` at sigma 0)."""
    alpha, sigma = process.alpha_sigma(level)
    return torch.log(alpha) - torch.log(sigma)


def _uni_bh_update(
    x: Tensor,
    x0_history: tuple[Tensor, ...],
    sigmas: Tensor,
    s: int,
    order: int,
    solver_type: SolverType,
    x0_at_t: Tensor | None = None,
    process: NoiseProcess = FLOW,
) -> Tensor:
    """One UniP (``x0_at_t is None``) or UniC update of ``x`` from ``sigmas[s]`` to ``sigmas[s + 1]``.

    Args:
        x: sample at ``sigmas[s]``.
        x0_history: x0 estimates, ``x0_history[-1 - k]`` at ``sigmas[s - k]``; ``order`` of them used.
        sigmas: CPU float32 schedule.
        s: index of the start sigma.
        order: ``p`` of UniP-p / UniC-p.
        solver_type: ``"bh1"`` or ``"bh2"``.
        x0_at_t: for the corrector, the x0 estimate at ``sigmas[s + 1]``.
    """
    # Scalars: 0-dim float32 CPU tensors, in diffusers' order of operations.
    _, sigma_s0 = process.alpha_sigma(sigmas[s])
    alpha_t, sigma_t = process.alpha_sigma(sigmas[s + 1])
    lambda_s0 = _half_log_snr(sigmas[s], process)
    h = _half_log_snr(sigmas[s + 1], process) - lambda_s0
    m0 = x0_history[-1]

    rks, d1s = [], []
    for k in range(1, order):
        rk = (_half_log_snr(sigmas[s - k], process) - lambda_s0) / h
        rks.append(rk)
        d1s.append((x0_history[-1 - k] - m0) / rk)  # divided differences D_k
    rks.append(torch.ones(()))
    rks = torch.stack(rks)

    hh = -h  # data prediction integrates e^{-h}
    h_phi_1 = torch.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    b_h = torch.expm1(hh) if solver_type == "bh2" else hh
    factorial_i = 1
    rows, rhs = [], []
    for i in range(1, order + 1):
        rows.append(torch.pow(rks, i - 1))
        rhs.append(h_phi_k * factorial_i / b_h)
        factorial_i *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial_i
    big_r, b = torch.stack(rows), torch.stack(rhs)  # (order, order), (order,)

    x_t = sigma_t / sigma_s0 * x - alpha_t * h_phi_1 * m0
    if x0_at_t is None:  # predictor: rhos over the earlier points only
        if d1s:
            rhos = torch.full((1,), 0.5) if order == 2 else torch.linalg.solve(big_r[:-1, :-1], b[:-1])
            x_t = x_t - alpha_t * b_h * _weighted_sum(rhos, d1s, x)
    else:  # corrector: one more point, the new estimate at t
        rhos = torch.full((1,), 0.5) if order == 1 else torch.linalg.solve(big_r, b)
        rhos = rhos.to(device=x.device, dtype=x.dtype)
        corr = rhos[-1] * (x0_at_t - m0)
        if d1s:
            corr = _weighted_sum(rhos[:-1], d1s, x) + corr
        x_t = x_t - alpha_t * b_h * corr
    return x_t.to(x.dtype)


def _weighted_sum(rhos: Tensor, d1s: list[Tensor], like: Tensor) -> Tensor:
    """``sum_k rhos[k] * d1s[k]`` (one contraction, as diffusers' einsum)."""
    rhos = rhos.to(device=like.device, dtype=like.dtype)
    return torch.einsum("k,k...->...", rhos, torch.stack(d1s))


def unipc_step(
    x: Tensor,
    model_output: Tensor,
    sigmas: Tensor,
    index: int,
    state: UniPCState,
    *,
    order: int = 2,
    solver_type: SolverType = "bh2",
    lower_order_final: bool = True,
    disable_corrector: frozenset[int] | tuple[int, ...] = (),
    process: NoiseProcess = FLOW,
) -> tuple[Tensor, UniPCState]:
    """One UniPC step for a velocity-predicting flow model: corrector, then predictor.

    Args:
        x: the sample at ``sigmas[index]`` (the previous step's output), any shape; keep it float32.
        model_output: the velocity prediction at ``(x, sigmas[index])``, same shape.
        sigmas: ``(steps + 1,)`` schedule ending in 0 (CPU float32, as :class:`Schedule` gives),
            all other sigmas strictly between 0 and 1 (a first sigma of exactly 1 gives NaN in
            diffusers for some orders and is refused here).
        index: the step, ``0 <= index < steps``.
        state: :class:`UniPCState()` at the first step, then what the previous step returned.
        order: the solver order ``p`` (Wan: 2); the corrector makes it ``p + 1`` accurate.
        solver_type: ``"bh2"`` (Wan) or ``"bh1"``.
        lower_order_final: lower the order near the end so the step into sigma 0 is first order.
        disable_corrector: step indices whose *output* is not corrected at the next step.
        process: the noise process the model's output belongs to (its x0 estimate and its alpha,
            sigma at each level); flow matching by default, Wan's.

    Returns:
        ``(x_next, new_state)``: the sample at ``sigmas[index + 1]`` and the state for step
        ``index + 1``. The same inputs always give the same outputs; nothing is mutated.
    """
    check_step_index(sigmas, index)
    if order < 1:
        raise KinemaError(f"UniPC order must be >= 1 (Wan uses 2); got {order}")
    if solver_type not in ("bh1", "bh2"):
        raise KinemaError(f"UniPC solver_type must be 'bh1' or 'bh2'; got {solver_type!r}")
    if state.last_index is not None and state.last_index != index - 1:
        raise KinemaError(
            f"UniPC state comes from step {state.last_index} but this is step {index}: thread the "
            "state returned by each step into the next one, or start from UniPCState()"
        )
    sigmas = sigmas.detach().to("cpu", torch.float32)
    num_steps = len(sigmas) - 1
    if not 0 < float(sigmas[index]) < 1:
        raise KinemaError(
            f"UniPC needs 0 < sigma < 1 at every step (its log-SNR is infinite at 0 and 1); got "
            f"sigmas[{index}] = {float(sigmas[index])}. Use unipc_flow_schedule, whose first sigma is "
            "1 - 1e-6 as in diffusers, or start a custom schedule below 1"
        )

    x0 = process.predict_x0(x, model_output, sigmas[index])
    if state.last_sample is not None and index - 1 not in disable_corrector:
        x = _uni_bh_update(
            state.last_sample, state.x0_history, sigmas, index - 1, state.last_order, solver_type, x0_at_t=x0, process=process
        )

    this_order = min(order, num_steps - index) if lower_order_final else order
    this_order = min(this_order, len(state.x0_history) + 1)  # warm-up: as many points as we have
    if this_order > 1 and float(sigmas[index + 1]) == 0.0:
        raise KinemaError(
            f"UniPC of order {this_order} cannot step into sigma 0 (the log-SNR step is infinite and "
            "the result would be inf/NaN); use lower_order_final=True"
        )
    history = (*state.x0_history, x0)[-order:]
    x_next = _uni_bh_update(x, history, sigmas, index, this_order, solver_type, process=process)
    return x_next, UniPCState(x0_history=history, last_sample=x, last_order=this_order, last_index=index)


@dataclass(frozen=True)
class UniPCSampler:
    """UniPC with fixed settings, behind the common sampler interface (see ``kinema.sampling``).

    The defaults are those of Wan 2.1's diffusers ``scheduler_config.json``: ``solver_order=2``,
    ``solver_type="bh2"``, ``lower_order_final=True``, ``disable_corrector=[]``.
    """

    order: int = 2
    solver_type: SolverType = "bh2"
    lower_order_final: bool = True
    disable_corrector: frozenset[int] = frozenset()
    process: NoiseProcess = FLOW  # what the model's output is (its x0 estimate, alpha and sigma)
    name: str = "unipc"
    default_schedule: Callable[..., Schedule] = unipc_flow_schedule

    def __post_init__(self) -> None:
        if not isinstance(self.order, int) or self.order < 1:
            raise KinemaError(f"UniPC order must be an integer >= 1 (Wan uses 2); got {self.order!r}")
        if self.solver_type not in ("bh1", "bh2"):
            raise KinemaError(f"UniPC solver_type must be 'bh1' or 'bh2'; got {self.solver_type!r}")
        object.__setattr__(self, "disable_corrector", frozenset(self.disable_corrector))

    def init_state(self, generator: object = None) -> UniPCState:
        return UniPCState()  # deterministic: no generator needed

    def step(
        self, x: Tensor, model_output: Tensor, sigmas: Tensor, index: int, state: UniPCState
    ) -> tuple[Tensor, UniPCState]:
        """See :func:`unipc_step`."""
        return unipc_step(
            x,
            model_output,
            sigmas,
            index,
            state,
            order=self.order,
            solver_type=self.solver_type,
            lower_order_final=self.lower_order_final,
            disable_corrector=self.disable_corrector,
            process=self.process,
        )
