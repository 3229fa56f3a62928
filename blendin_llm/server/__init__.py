"""An OpenAI-compatible HTTP server of a ``BlendedLLM`` (FastAPI + uvicorn, extra ``[server]``):
``create_app(llm, ...)`` builds the app, ``blendin serve`` runs it."""

from .app import create_app

__all__ = ["create_app"]
