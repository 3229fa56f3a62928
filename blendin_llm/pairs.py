"""Building a blend from names: presets, directories or .gguf files, every source checked before
the first model loads (what ``blendin`` commands and the Ray Serve replicas do)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from .config import BlendConfig, ModelSpec
from .sources import DEFAULT_GUIDE, check_source

if TYPE_CHECKING:
    from .llm import BlendedLLM


def check_sources(base: str, guides: Sequence[str] | None, strategy: str = "blendin") -> list[str]:
    """Check that every source exists (before any model loads); the guides to load: ``guides``,
    or the default guide when None (none for ``base_only``).

    Raises:
        ModelLoadError: a source does not exist (with a close preset name, when there is one).
    """
    if not guides:
        guides = [] if strategy == "base_only" else [DEFAULT_GUIDE]
    for source in [base, *guides]:
        check_source(source)
    return list(guides)


def build_pair(
    base: str,
    guides: Sequence[str] | None = None,
    *,
    strategy: str = "blendin",
    gamma: float = 0.4,
    alpha: float | Literal["auto"] = "auto",
    system_prompt: str | None = None,
    quiet: bool = True,
) -> BlendedLLM:
    """A ``BlendedLLM`` from model names.

    Args:
        base: the base: a preset name, a local directory or a .gguf file.
        guides: the guides, the same way; None gives the default guide, except with
            ``strategy="base_only"``, which loads none.
        strategy, gamma, alpha: the ``BlendConfig``.
        system_prompt: every model's system prompt (``ModelSpec.system_prompt``).
        quiet: silence transformers' loading warnings (the library's own errors say what is
            wrong).

    Returns:
        The blend, loaded.

    Raises:
        ConfigError: a setting is out of range.
        ModelLoadError: a source does not exist or cannot be loaded (checked for every source
            before the first model loads).
    """
    config = BlendConfig(strategy=strategy, gamma=gamma, alpha=alpha)
    guides = check_sources(base, guides, strategy)
    from .llm import BlendedLLM

    if quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
    specs = [ModelSpec(g, system_prompt=system_prompt) for g in guides]
    return BlendedLLM(ModelSpec(base, system_prompt=system_prompt), specs, config)
