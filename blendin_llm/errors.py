"""Typed errors. Every error says what to do about it; none leaves a BlendedLLM unusable."""

from __future__ import annotations


class BlendInError(Exception):
    """Base class of every error this library raises on purpose."""


class ConfigError(BlendInError, ValueError):
    """A configuration value is out of range or inconsistent (gamma, alpha, strategy, ...)."""


class PromptError(BlendInError, ValueError):
    """The prompt or the messages cannot be rendered or do not fit the model."""


class GenerationArgumentError(BlendInError, ValueError):
    """A per-call argument (max_new_tokens, stop strings, sampling) is invalid."""


class ModelLoadError(BlendInError, RuntimeError):
    """A model or tokenizer could not be loaded from the given source."""


class IncompatibleModelsError(BlendInError, ValueError):
    """Base and guide cannot be blended as given (different vocabularies, different devices)."""
