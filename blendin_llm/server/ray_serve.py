"""``blendin serve``'s OpenAI-compatible app as a Ray Serve deployment: N replicas, each holding
its own pair of models, behind Ray Serve's HTTP proxy (optional extra ``[ray]``).

    from blendin_llm.server.ray_serve import deployment
    from ray import serve

    serve.run(deployment(base="/models/base", guides=["/models/guide"], replicas=2,
                         ray_actor_options={"num_gpus": 1}), route_prefix="/")

or ``blendin serve --ray --replicas 2``. Each replica builds its ``BlendedLLM`` once, when Ray starts
it, and serves the same routes as ``blendin serve`` (``create_app``): requests that reach one
replica decode together in its running batch. Ray Serve spreads requests over the replicas
(``max_ongoing_requests`` each), restarts a replica whose actor dies, and scales between
``min_replicas`` and ``max_replicas`` when autoscaling is on. Replicas share an audit log only
through PostgreSQL (``audit="postgresql://..."``): a SQLite file belongs to one process.
"""

from __future__ import annotations

from typing import Any


class _Replica:
    """One replica: the pair it serves and its app (built in the replica's process)."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options

    def __serve_build_asgi_app__(self) -> Any:
        from ..pairs import build_pair
        from .app import create_app

        o = self.options
        llm = build_pair(
            o["base"],
            o.get("guides") or None,
            strategy=o.get("strategy", "blendin"),
            gamma=o.get("gamma", 0.4),
            alpha=o.get("alpha", "auto"),
        )
        llm.scheduler.max_batch_size = o.get("max_batch_size", 16)
        return create_app(
            llm,
            api_keys=o.get("api_keys"),
            audit=o.get("audit"),
            audit_content=o.get("audit_content", "full"),
            served_name=o.get("served_name"),
            max_queue=o.get("max_queue"),
        )


def deployment(
    base: str,
    guides: list[str] | None = None,
    *,
    strategy: str = "blendin",
    gamma: float = 0.4,
    alpha: str | float = "auto",
    replicas: int = 1,
    min_replicas: int | None = None,
    max_replicas: int | None = None,
    ray_actor_options: dict[str, Any] | None = None,
    max_batch_size: int = 16,
    max_ongoing_requests: int | None = None,
    api_keys: dict[str, str] | None = None,
    audit: str | None = None,
    audit_content: str = "full",
    served_name: str | None = None,
    max_queue: int | None = None,
    name: str = "blendin",
) -> Any:
    """The Ray Serve application of a blend (pass it to ``serve.run``).

    Args:
        base, guides, strategy, gamma, alpha: the pair, as ``blendin serve`` takes them (presets,
            directories, .gguf files).
        replicas: replicas to run (without autoscaling).
        min_replicas, max_replicas: with either, Ray Serve autoscales between them (starting at
            ``replicas``) on the requests in flight per replica.
        ray_actor_options: each replica's resources, e.g. ``{"num_gpus": 1}`` (default: one CPU).
        max_batch_size: answers one replica decodes together.
        max_ongoing_requests: requests Ray sends one replica at once (default: 4 x
            ``max_batch_size``, the app's own queue limit).
        api_keys, audit, audit_content, served_name, max_queue: as ``create_app``; ``audit``
            should be a PostgreSQL URL when there is more than one replica.
        name: the deployment's name.

    Returns:
        A bound Ray Serve application.
    """
    from ray import serve

    from ..errors import ConfigError

    if not isinstance(replicas, int) or replicas < 1:
        raise ConfigError(f"replicas must be an integer >= 1, got {replicas!r}")
    several = max(replicas, max_replicas or 1) > 1  # now, or once autoscaling adds replicas
    if audit and several and not str(audit).startswith(("postgresql://", "postgres://")):
        raise ConfigError(
            "several replicas share an audit log only through PostgreSQL: pass "
            "audit='postgresql://...' (a SQLite file belongs to one process)"
        )
    options = dict(
        base=base,
        guides=list(guides or []),
        strategy=strategy,
        gamma=gamma,
        alpha=alpha,
        max_batch_size=max_batch_size,
        api_keys=api_keys,
        audit=audit,
        audit_content=audit_content,
        served_name=served_name,
        max_queue=max_queue,
    )
    kwargs: dict[str, Any] = dict(
        name=name,
        ray_actor_options=ray_actor_options or {"num_cpus": 1},
        max_ongoing_requests=max_ongoing_requests or 4 * max_batch_size,
    )
    if min_replicas is not None or max_replicas is not None:
        kwargs["autoscaling_config"] = {
            "min_replicas": min_replicas if min_replicas is not None else 1,
            "initial_replicas": replicas,
            "max_replicas": max_replicas if max_replicas is not None else replicas,
            "target_ongoing_requests": max_batch_size,
        }
    else:
        kwargs["num_replicas"] = replicas
    ingress = serve.ingress()(type("BlendInReplica", (_Replica,), {"__module__": __name__}))
    return serve.deployment(**kwargs)(ingress).bind(options)


def run(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 8000,
    num_cpus: int | None = None,
    blocking: bool = True,
) -> None:
    """Start (or join) a local Ray cluster, serve ``app`` at ``http://host:port/v1``, and, with
    ``blocking``, wait until interrupted."""
    import time

    import ray
    from ray import serve

    if not ray.is_initialized():
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": host, "port": port})
    serve.run(app, route_prefix="/", name="blendin")
    if blocking:
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            serve.shutdown()
