"""``blendin serve``: the OpenAI-compatible server, alone or as Ray Serve replicas."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from ..errors import ConfigError
from ..sources import DEFAULT_BASE
from .common import _build, _errors, app, err

if TYPE_CHECKING:
    pass


@app.command()
def serve(
    base: str = typer.Option(DEFAULT_BASE, help="base model: preset, directory or .gguf"),
    guide: list[str] | None = typer.Option(None, help="guide model (repeat for several)"),
    strategy: str = typer.Option("blendin"),
    gamma: float = typer.Option(0.4),
    alpha: str = typer.Option("auto"),
    profile: str | None = typer.Option(
        None, help="a profile from `blendin calibrate`: its calibrated reliability score"
    ),
    host: str = typer.Option("127.0.0.1"),
    port: int = typer.Option(8000),
    api_key: str | None = typer.Option(None, "--api-key", help="require this Bearer key"),
    api_keys_file: str | None = typer.Option(None, help="file of `key tenant` lines"),
    audit: str | None = typer.Option(
        None,
        "--audit",
        envvar="BLENDIN_AUDIT",
        help="audit log URL: sqlite:///path.db or postgresql://...",
    ),
    audit_content: str = typer.Option(
        "full", help="full, or hash (SHA-256 of request and answer only)"
    ),
    max_batch_size: int = typer.Option(16, help="answers decoded together"),
    max_queue: int | None = typer.Option(
        None, help="most requests in flight; more get 429 (default 4 x max-batch-size)"
    ),
    served_model_name: str | None = typer.Option(
        None, help="the model name clients send (default: the blend's name)"
    ),
    ray: bool = typer.Option(
        False,
        "--ray",
        help="serve replicas as a Ray Serve deployment "
        "(local Ray cluster, or the one RAY_ADDRESS names)",
    ),
    replicas: int = typer.Option(1, help="with --ray: replicas, each holding its own pair"),
    min_replicas: int | None = typer.Option(None, help="with --ray: autoscale down to this"),
    max_replicas: int | None = typer.Option(None, help="with --ray: autoscale up to this"),
    num_gpus: float = typer.Option(0, help="with --ray: GPUs per replica"),
) -> None:
    """Serve the blended model over an OpenAI-compatible HTTP API (chat completions,
    completions, models, health, metrics), each answer with its reliability record. With no
    model options it serves the offline default pair."""
    with _errors():
        try:
            import uvicorn

            from ..server import create_app
        except ImportError as e:
            raise ConfigError(
                f"blendin serve needs the server extra ({e.name} is missing): "
                "pip install 'blendin-llm[server]'"
            ) from None
        if max_batch_size < 1:
            raise ConfigError(f"--max-batch-size must be at least 1, got {max_batch_size}")
        if audit_content not in ("full", "hash"):
            raise ConfigError(f"--audit-content must be full or hash, got {audit_content!r}")
        keys = _api_keys(api_key, api_keys_file)
        if ray:
            _serve_ray(
                base,
                guide,
                strategy,
                gamma,
                alpha,
                replicas,
                min_replicas,
                max_replicas,
                num_gpus,
                max_batch_size,
                keys,
                audit,
                audit_content,
                served_model_name,
                max_queue,
                host,
                port,
            )
            return
        log = None
        if audit:
            from ..audit import AuditLog

            log = AuditLog.open(audit, content=audit_content)
        llm = _build(base, guide, strategy, gamma, alpha, None)
        llm.scheduler.max_batch_size = max_batch_size
        if profile:
            from ..config import load_profile

            prof = load_profile(profile)["score_model"]
            rel = llm.config.reliability.replace(score_model=prof)
            llm.config = llm.config.replace(reliability=rel)
            llm._check_config(llm.config)
        app_ = create_app(
            llm, api_keys=keys, audit=log, max_queue=max_queue, served_name=served_model_name
        )
    err.print(f"serving {llm.name!r} on http://{host}:{port}/v1 (OpenAI-compatible)")
    uvicorn.run(app_, host=host, port=port, log_level="warning", timeout_graceful_shutdown=30)


def _serve_ray(
    base: str,
    guide: list[str] | None,
    strategy: str,
    gamma: float,
    alpha: str,
    replicas: int,
    min_replicas: int | None,
    max_replicas: int | None,
    num_gpus: float,
    max_batch_size: int,
    keys: dict | None,
    audit: str | None,
    audit_content: str,
    served_name: str | None,
    max_queue: int | None,
    host: str,
    port: int,
) -> None:
    """``blendin serve --ray``: the app as a Ray Serve deployment of ``replicas`` replicas."""
    try:
        from ..server.ray_serve import deployment, run
    except ImportError as e:
        raise ConfigError(
            f"blendin serve --ray needs the ray extra ({e.name} is missing): "
            "pip install 'blendin-llm[ray]'"
        ) from None
    from ..pairs import check_sources

    guide = check_sources(base, guide or None, strategy)
    options = {"num_cpus": 1, **({"num_gpus": num_gpus} if num_gpus else {})}
    app_ = deployment(
        base,
        guide,
        strategy=strategy,
        gamma=gamma,
        alpha=alpha,
        replicas=replicas,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        ray_actor_options=options,
        max_batch_size=max_batch_size,
        api_keys=keys,
        audit=audit,
        audit_content=audit_content,
        served_name=served_name,
        max_queue=max_queue,
    )
    err.print(f"serving {replicas} replica(s) on http://{host}:{port}/v1 (Ray Serve)")
    run(app_, host=host, port=port)


def _api_keys(key: str | None, path: str | None) -> dict[str, str] | None:
    """key -> tenant, from --api-key (tenant "default") and --api-keys-file."""
    keys: dict[str, str] = {}
    if key:
        keys[key] = "default"
    if path:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise ConfigError(f"cannot read --api-keys-file {path!r}: {e.strerror or e}") from None
        for n, line in enumerate(lines, 1):
            parts = line.split()
            if not parts or parts[0].startswith("#"):
                continue
            if len(parts) != 2:
                raise ConfigError(f"{path}:{n}: expected `key tenant`, got {line!r}")
            keys[parts[0]] = parts[1]
    return keys or None
