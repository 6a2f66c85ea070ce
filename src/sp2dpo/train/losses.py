"""Preference losses with a per-pair temperature, one pure function per variant.

Every function has the same signature::

    loss_fn(chosen_logratios, rejected_logratios, beta, cfg, *, chosen_lengths=None,
            rejected_lengths=None) -> per-pair losses, shape (B,)

- ``chosen_logratios`` / ``rejected_logratios``: rho(y) = S_theta(y) - S_ref(y), the policy/reference
  log-ratio of each completion, **summed** over completion tokens, shape (B,).
- ``beta``: the per-pair temperature beta_i, shape (B,) (a global beta is a constant tensor).
- ``cfg``: the variant's knobs (:class:`sp2dpo.core.config.LossConfig`, or any object with the same
  attributes).
- ``chosen_lengths`` / ``rejected_lengths``: completion token counts, for variants that average
  over tokens (IPO).

Losses are computed in float32 with ``logsigmoid`` (never ``log(sigmoid(.))``); the caller takes
the mean over pairs. Variants are registered by name in :data:`LOSSES`; ``train.loss.type`` picks one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
import torch.nn.functional as F


class LossFn(Protocol):
    def __call__(
        self,
        chosen_logratios: torch.Tensor,
        rejected_logratios: torch.Tensor,
        beta: torch.Tensor,
        cfg: Any,
        *,
        chosen_lengths: torch.Tensor | None = None,
        rejected_lengths: torch.Tensor | None = None,
    ) -> torch.Tensor: ...


def _fp32(*tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.float() for t in tensors]


def sigmoid(chosen_logratios, rejected_logratios, beta, cfg, *, chosen_lengths=None, rejected_lengths=None):
    """DPO / SP2DPO: ``-log sigmoid(beta_i * Delta_i)``, Delta_i = rho(y_w) - rho(y_l).

    SP2DPO paper §4.2, eq. 5; with every beta_i = c it is DPO (Rafailov et
    al. 2023, eq. 7) with beta = c, i.e. TRL's ``loss_type="sigmoid"``.

    Example:
        >>> import torch
        >>> out = sigmoid(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([0.1]), None)
        >>> round(out.item(), 6)  # log 2
        0.693147
    """
    cw, rl, b = _fp32(chosen_logratios, rejected_logratios, beta)
    return -F.logsigmoid(b * (cw - rl))


def robust(chosen_logratios, rejected_logratios, beta, cfg, *, chosen_lengths=None, rejected_lengths=None):
    """Robust DPO (Chowdhury et al. 2024, eq. 8; TRL ``"robust"``), label-noise rate eps.

    ``[-(1-eps) log sigmoid(beta_i Delta_i) + eps log sigmoid(-beta_i Delta_i)] / (1 - 2 eps)``;
    eps = ``cfg.label_smoothing``; eps = 0 gives :func:`sigmoid`.
    """
    eps = float(cfg.label_smoothing)
    cw, rl, b = _fp32(chosen_logratios, rejected_logratios, beta)
    z = b * (cw - rl)
    return (-(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps)


def cdpo(chosen_logratios, rejected_logratios, beta, cfg, *, chosen_lengths=None, rejected_lengths=None):
    """Conservative DPO (Mitchell 2023, "A note on DPO with noisy preferences"), eps-smoothed labels.

    ``-(1-eps) log sigmoid(beta_i Delta_i) - eps log sigmoid(-beta_i Delta_i)``; eps =
    ``cfg.label_smoothing``; eps = 0 gives :func:`sigmoid` (TRL <= 0.28 ``sigmoid`` with smoothing).
    """
    eps = float(cfg.label_smoothing)
    cw, rl, b = _fp32(chosen_logratios, rejected_logratios, beta)
    z = b * (cw - rl)
    return -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)


def hinge(chosen_logratios, rejected_logratios, beta, cfg, *, chosen_lengths=None, rejected_lengths=None):
    """SLiC hinge loss (Zhao et al. 2023, eq. 3; TRL ``"hinge"``): ``relu(1 - beta_i Delta_i)``."""
    cw, rl, b = _fp32(chosen_logratios, rejected_logratios, beta)
    return torch.relu(1 - b * (cw - rl))


def dpo_margin(chosen_logratios, rejected_logratios, beta, cfg, *, chosen_lengths=None, rejected_lengths=None):
    """DPO with a fixed margin in reward units (DPO-PoP paper, §2.3 eq. 4, "DPO-margin-1").

    ``-log sigmoid(beta_i Delta_i - m)``, m = ``cfg.margin``; m = 0 gives :func:`sigmoid`.
    """
    cw, rl, b = _fp32(chosen_logratios, rejected_logratios, beta)
    return -F.logsigmoid(b * (cw - rl) - float(cfg.margin))


def ipo(chosen_logratios, rejected_logratios, beta, cfg, *, chosen_lengths=None, rejected_lengths=None):
    """IPO (Azar et al. 2023, eq. 17; TRL ``"ipo"``) with tau_i = beta_i on token-averaged ratios.

    ``(rho_w/|y_w| - rho_l/|y_l| - 1/(2 beta_i))^2``; needs the completion lengths.
    """
    if chosen_lengths is None or rejected_lengths is None:
        raise ValueError("the 'ipo' loss averages over tokens: pass chosen_lengths and rejected_lengths")
    cw, rl, b, lw, ll = _fp32(chosen_logratios, rejected_logratios, beta, chosen_lengths, rejected_lengths)
    delta = cw / lw.clamp(min=1.0) - rl / ll.clamp(min=1.0)
    return (delta - 1 / (2 * b)) ** 2


#: Loss variants by name (``train.loss.type``).
LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "sigmoid": sigmoid,
    "robust": robust,
    "cdpo": cdpo,
    "hinge": hinge,
    "dpo_margin": dpo_margin,
    "ipo": ipo,
}


def get(name: str) -> Callable[..., torch.Tensor]:
    """The loss function registered as ``name``; the error lists the registered names."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}") from None
