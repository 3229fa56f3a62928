"""Run-time mitigation: a running health estimate per guide, across responses.

After each response, ``GuideMonitor.observe`` folds the response's per-guide agreement and the
share of base-unsure steps into running averages. Before the next response, ``GuideMonitor.plan``
turns them into one weight per guide (1 = as configured, ``downweight``, or 0 = switched off) and
the notes that go into that response's ``reliability.mitigations``. See ``MitigationConfig``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from .config import MitigationConfig
from .results import Reliability


@dataclass
class GuideHealth:
    """What is known about one guide: running averages over the responses it was consulted in."""

    name: str
    responses: int = 0
    agreement: float | None = None
    unsure_rate: float | None = None
    weight: float = 1.0
    status: str = "ok"  # ok | down-weighted | off
    reason: str = ""
    since_probe: int = 0


class GuideMonitor:
    """Per-``BlendedLLM`` guide health (``llm.guide_monitor``). A response's plan is made when it
    is prepared; its numbers are folded in when it finishes."""

    def __init__(self, names: list[str]) -> None:
        self.health = [GuideHealth(n) for n in names]
        self._lock = threading.Lock()

    def reset(self) -> None:
        """Forget everything: every guide back to weight 1."""
        with self._lock:
            self.health = [GuideHealth(h.name) for h in self.health]

    def plan(self, cfg: MitigationConfig | None) -> tuple[list[float], list[str]]:
        """(weight per guide, notes) for the next response."""
        if cfg is None or not cfg.guide_health:
            return [1.0] * len(self.health), []
        with self._lock:
            return self._plan(cfg)

    def _plan(self, cfg: MitigationConfig) -> tuple[list[float], list[str]]:
        weights, notes = [], []
        for h in self.health:
            w = h.weight
            if h.status == "off":
                h.since_probe += 1
                if h.since_probe >= cfg.probe_every:
                    h.since_probe = 0
                    w = cfg.downweight
                    notes.append(
                        f"guide {h.name!r} is switched off ({h.reason}); consulted "
                        f"this time at weight {w:.2f} to re-measure it"
                    )
                else:
                    notes.append(f"guide {h.name!r} switched off: {h.reason}")
            elif h.status == "down-weighted":
                notes.append(f"guide {h.name!r} down-weighted to {w:.2f}: {h.reason}")
            weights.append(w)
        return weights, notes

    def observe(self, rel: Reliability, cfg: MitigationConfig | None, active: list[bool]) -> None:
        """Fold one response in. ``active``: which guides took part in it."""
        if cfg is None or not cfg.guide_health:
            return
        with self._lock:
            self._observe(rel, cfg, active)

    def _observe(self, rel: Reliability, cfg: MitigationConfig, active: list[bool]) -> None:
        stats = iter(rel.guides)
        for h, was_active in zip(self.health, active):
            if not was_active:
                continue
            g = next(stats)
            if not g.consulted or g.agreement_topk is None:
                continue
            d = cfg.decay
            h.responses += 1
            h.agreement = (
                g.agreement_topk
                if h.agreement is None
                else d * h.agreement + (1 - d) * g.agreement_topk
            )
            u = rel.base_unsure_rate
            h.unsure_rate = u if h.unsure_rate is None else d * h.unsure_rate + (1 - d) * u
            self._judge(h, cfg)

    @staticmethod
    def _judge(h: GuideHealth, cfg: MitigationConfig) -> None:
        if h.responses < cfg.min_responses:
            return
        assert h.agreement is not None and h.unsure_rate is not None  # set with each response
        over = f"over {h.responses} responses"
        if h.agreement < cfg.off_agreement:
            h.status, h.weight = "off", 0.0
            h.reason = f"running agreement {h.agreement:.2f} < {cfg.off_agreement:.2f} {over}"
        elif h.agreement < cfg.min_agreement:
            h.status, h.weight = "down-weighted", cfg.downweight
            h.reason = f"running agreement {h.agreement:.2f} < {cfg.min_agreement:.2f} {over}"
        elif h.unsure_rate > cfg.max_intervention_rate:
            h.status, h.weight = "down-weighted", cfg.downweight
            h.reason = (
                f"running base-unsure rate {h.unsure_rate:.2f} > "
                f"{cfg.max_intervention_rate:.2f} {over}"
            )
        else:
            h.status, h.weight, h.reason = "ok", 1.0, ""
