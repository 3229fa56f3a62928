"""Strategies turn the base's and the guides' next-token distributions into one distribution.

Each strategy has two small jobs, in the spirit of transformers' LogitsProcessors:

* ``consult(base_top1)``: whether the guides are asked at this step (they run only when asked);
* ``alphas(view)``: one weight per guide in [0, 1].

All the mixture strategies then share one rule (``Strategy.combine``): with G guides,

    p = (1/G) * sum_i [ alpha_i * p_guide_i + (1 - alpha_i) * p_base ]

the average of the pairwise blends. With one guide this is exactly BlendIn's
``p = alpha * p_guide + (1 - alpha) * p_base``. A strategy whose rule is not a mixture (proxy-tuning,
for example) overrides ``combine``. New strategies register themselves with ``@register_strategy``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch

if TYPE_CHECKING:
    from .config import BlendConfig

_REGISTRY: dict[str, type[Strategy]] = {}


def register_strategy(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: make a strategy selectable by its ``name`` in ``BlendConfig``.

    Args:
        cls: a ``Strategy`` subclass with a unique ``name``.

    Returns:
        ``cls``, registered.
    """
    _REGISTRY[cls.name] = cls
    return cls


def available_strategies() -> tuple[str, ...]:
    """The registered strategy names, in registration order.

    Returns:
        The names ``BlendConfig.strategy`` accepts.
    """
    return tuple(_REGISTRY)


def get_strategy(config: BlendConfig) -> Strategy:
    """The strategy a config names, built from it.

    Args:
        config: a checked ``BlendConfig`` (its ``strategy`` is registered).

    Returns:
        A new ``Strategy`` instance.
    """
    return _REGISTRY[config.strategy](config)


def unsure(base_top1: float, gamma: float) -> bool:
    """The gamma rule, in one place: the base is unsure at a step when its top-1 probability is
    below gamma. Strategies gate the guides on it; the reliability record counts it."""
    return base_top1 < gamma


class ConsultPolicy:
    """Whether the guides are asked at a step: the strategy's gate (``Strategy.consult``), then the
    run-time intervention cap (``MitigationConfig.intervention_cap``): a step is consulted only
    while the consulted steps so far are fewer than cap x (steps so far, this one included), so at
    most ceil(cap x n) of the first n steps are. Counts its own steps; reads nothing else.

    Args:
        strategy: the strategy whose ``consult`` gates the guides.
        cap: the most consulted steps per step, or None for no cap.
    """

    __slots__ = ("strategy", "cap", "steps", "consulted", "capped")

    def __init__(self, strategy: Strategy, cap: float | None = None) -> None:
        self.strategy, self.cap = strategy, cap
        self.steps = 0
        self.consulted = 0
        self.capped = 0  # steps the cap kept the guides out of

    def __call__(self, base_top1: float) -> bool:
        ask = self.strategy.consult(base_top1)
        if ask and self.cap is not None and self.consulted >= self.cap * (self.steps + 1):
            ask = False
            self.capped += 1
        self.steps += 1
        self.consulted += ask
        return ask


@dataclass
class StepView:
    """What a strategy may look at when the guides were consulted (all in the base's token space).

    base_probs: [V]; guide_probs: [G, V]; base_top1: scalar tensor; guide_top1: [G] (each guide's
    top-1 probability); guide_argmax: [G]; base_at_guide_top: [G] = p_base(argmax of guide i);
    guide_weight: [G] run-time mitigation weights that ``combine`` multiplies the alphas by (None
    = all 1).
    """

    base_probs: torch.Tensor
    guide_probs: torch.Tensor
    base_top1: torch.Tensor
    guide_top1: torch.Tensor
    guide_argmax: torch.Tensor
    base_at_guide_top: torch.Tensor
    guide_weight: torch.Tensor | None = None


class Strategy:
    """Base class. Subclasses set ``name`` and override ``consult`` and ``alphas`` (or ``combine``
    for a rule that is not a mixture), then register with ``@register_strategy``.

    Args:
        config: the call's BlendConfig (``gamma``, ``alpha``).
    """

    name: ClassVar[str] = ""
    requires_guide: ClassVar[bool] = True

    def __init__(self, config: BlendConfig) -> None:
        self.gamma = float(config.gamma)
        self.alpha = config.alpha

    def consult(self, base_top1: float) -> bool:
        """Whether the guides are asked at this step (default: the gamma rule, ``unsure``).

        Args:
            base_top1: the base's top-1 probability at this step.

        Returns:
            True to run the guides and blend.
        """
        return unsure(base_top1, self.gamma)

    def alphas(self, view: StepView) -> torch.Tensor:
        """Each guide's weight at a consulted step.

        Args:
            view: the step's distributions and their statistics.

        Returns:
            A [G] tensor of weights in [0, 1].
        """
        raise NotImplementedError

    def combine(self, view: StepView) -> tuple[torch.Tensor, torch.Tensor]:
        """The blended distribution of a consulted step: the mean of the pairwise mixtures
        ``alpha_i * p_guide_i + (1 - alpha_i) * p_base`` (alphas times the mitigation weights).

        Args:
            view: the step's distributions and their statistics.

        Returns:
            (distribution [V] summing to 1, the alphas used [G]).
        """
        a = self.alphas(view).to(view.guide_probs.dtype)
        if view.guide_weight is not None:
            a = a * view.guide_weight
        g = a.shape[0]
        mixed = (a / g) @ view.guide_probs
        mixed = mixed + (1.0 - a.mean()) * view.base_probs
        return mixed, a


@register_strategy
class BaseOnly(Strategy):
    """The base model alone; the guides are never run."""

    name = "base_only"
    requires_guide = False

    def consult(self, base_top1: float) -> bool:
        return False


@register_strategy
class GuideOnly(Strategy):
    """The guides alone (averaged when there are several), at every step."""

    name = "guide_only"

    def consult(self, base_top1: float) -> bool:
        return True

    def alphas(self, view: StepView) -> torch.Tensor:
        return torch.ones_like(view.guide_top1)


@register_strategy
class Nudging(Strategy):
    """Binary intervention: when the base's top-1 probability is below gamma, the guides decide."""

    name = "nudging"

    def alphas(self, view: StepView) -> torch.Tensor:
        return torch.ones_like(view.guide_top1)


@register_strategy
class BlendInStrategy(Strategy):
    """When the base is unsure (top-1 < gamma), blend; alpha fixed or ``"auto"``:

    alpha_i = clip(m_g_i / (m_b + m_g_i) + 0.1 * p_base(argmax guide_i), 0, 1)

    where m is each model's top-1 probability. Each guide gets its own alpha from its own
    confidence and its agreement with the base.
    """

    name = "blendin"

    def alphas(self, view: StepView) -> torch.Tensor:
        if self.alpha != "auto":
            return torch.full_like(view.guide_top1, float(self.alpha))
        conf = view.guide_top1 / (view.base_top1 + view.guide_top1)
        return (conf + 0.1 * view.base_at_guide_top).clamp(0.0, 1.0)


@register_strategy
class Ensemble(Strategy):
    """Every step, the plain average of the base and all guides (each model weighs 1/(G+1))."""

    name = "ensemble"

    def consult(self, base_top1: float) -> bool:
        return True

    def alphas(self, view: StepView) -> torch.Tensor:
        g = view.guide_top1.shape[0]
        return torch.full_like(view.guide_top1, g / (g + 1.0))
