"""Commands: ``serve``, ``apikey new``, ``audit verify``.

Flags map 1:1 onto ``ServeConfig``; ``--api-keys-file``, ``--audit-log``, ``--public-key`` and
``--key-source`` fall back to ``ONNXGUARD_API_KEYS_FILE``, ``ONNXGUARD_AUDIT_LOG``,
``ONNXGUARD_PUBLIC_KEY`` and ``ONNXGUARD_KEY_SOURCE``.  Secrets never go on the command line:
the TLS key password comes from the env var named by ``--tls-key-password-env``.  Nothing heavy
is imported until a command runs (the server never imports torch or transformers).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer

from onnxguard.cli._options import (
    Json,
    KeySource,
    Providers,
    PublicKey,
    Threads,
    must_exist,
)
from onnxguard.cli._output import console
from onnxguard.errors import PathNotFoundError, UsageError
from onnxguard.serve.settings import DocsMode, LogLevel

apikey_app = typer.Typer(help="Create API keys for `onnxguard serve`.", no_args_is_help=True)
audit_app = typer.Typer(help="Check `onnxguard serve` audit logs.", no_args_is_help=True)


def serve_command(
    bundle: Path = typer.Argument(
        ..., callback=must_exist, metavar="BUNDLE|REPOSITORY",
        help="A bundle directory, or a model repository of NAME/VERSION/ bundles.",
    ),
    host: str = typer.Option("127.0.0.1", help="Address to bind (loopback unless told)."),
    port: int = typer.Option(8000, help="Port to bind."),
    model_name: str | None = typer.Option(
        None, "--model-name", help="Model name in /v2 paths (default: the bundle's name)."
    ),
    default_model: str | None = typer.Option(
        None, "--default-model",
        help="Repository: the model of requests that name none (default: the only one).",
    ),
    drift_window: int = typer.Option(
        1000, "--drift-window", metavar="TEXTS",
        help="Texts per model version compared with the bundle's drift reference (0: off).",
    ),
    repository_poll: float = typer.Option(
        5.0, "--repository-poll", metavar="SECONDS",
        help="Repository: look for new, changed and removed versions this often (0: never).",
    ),
    api_keys_file: Path | None = typer.Option(
        None,
        "--api-keys-file",
        envvar="ONNXGUARD_API_KEYS_FILE",
        help="File of KEY_ID:SHA256_HEX[:SCOPES[:MODELS]] lines (`onnxguard apikey new`); re-read "
        "when it changes.",
    ),
    allow_unauthenticated: bool = typer.Option(
        False,
        "--allow-unauthenticated",
        help="No API keys (loopback only; rate limits then apply per client address).",
    ),
    rate_limit: str = typer.Option(
        "600/minute", "--rate-limit", help="Requests per key: N/second|minute|hour|day, or off."
    ),
    audit_log: Path | None = typer.Option(
        None,
        "--audit-log",
        envvar="ONNXGUARD_AUDIT_LOG",
        help="Hash-chained JSON-lines audit log, one record per request.",
    ),
    audit_max_bytes: str = typer.Option("100MiB", help="Rotate the audit log at this size."),
    audit_keep: int = typer.Option(0, min=0, help="Rotated audit files to keep (0: all)."),
    audit_fsync: bool = typer.Option(
        True, "--audit-fsync/--no-audit-fsync", help="fsync audit records before responding."
    ),
    tls_cert: Path | None = typer.Option(None, "--tls-cert", help="TLS certificate (PEM)."),
    tls_key: Path | None = typer.Option(None, "--tls-key", help="TLS private key (PEM)."),
    tls_key_password_env: str | None = typer.Option(
        None,
        "--tls-key-password-env",
        metavar="NAME",
        help="Env var holding the TLS key's password.",
    ),
    tls_client_ca: Path | None = typer.Option(
        None, "--tls-client-ca", help="Require client certificates from this CA (mutual TLS)."
    ),
    max_body: str = typer.Option(
        "1MiB", "--max-body", help="Request body limit, also after gzip/deflate decoding."
    ),
    max_texts: int = typer.Option(64, "--max-texts", help="Texts per request (at least 1)."),
    max_chars: int = typer.Option(20_000, "--max-chars", help="Characters per text."),
    max_tokens: int = typer.Option(16_384, "--max-tokens", help="Tokens per request."),
    body_timeout: float = typer.Option(30.0, help="Seconds a client may take to send its body."),
    max_connections: int = typer.Option(
        1024, help="Open connections; a new one evicts the oldest idle one when all are taken."
    ),
    max_connections_per_client: int = typer.Option(
        128,
        "--max-connections-per-client",
        min=0,
        help="Open connections per client address (0: no cap; trusted proxies exempt).",
    ),
    header_timeout: float = typer.Option(
        10.0, help="Seconds a connection may take to send a complete request head."
    ),
    auth_failures_per_minute: int = typer.Option(
        30,
        "--auth-failures-per-minute",
        min=1,
        help="Failed authentications per client address per minute (429 beyond).",
    ),
    token_limit: str = typer.Option(
        "60000/minute",
        "--token-limit",
        help="Tokens per key: N/second|minute|hour|day, or off (429 beyond); the default "
        "matches 600 requests/minute of ~100 tokens.",
    ),
    max_batch: int = typer.Option(32, "--max-batch", help="Texts per ONNX Runtime call."),
    max_wait_ms: float = typer.Option(
        2.0, "--max-wait-ms", help="How long a text may wait for others to share its batch."
    ),
    max_batch_tokens: int = typer.Option(
        8192, "--max-batch-tokens", help="Rows x padded length per call."
    ),
    queue_size: int = typer.Option(
        1024, "--queue-size", help="Texts waiting for a batch; beyond it a fast 503."
    ),
    timeout: float = typer.Option(30.0, "--timeout", help="Per-request timeout in seconds (504)."),
    min_fill: float = typer.Option(
        0.5, "--min-fill", help="Length bucketing: least share of real tokens in a batch."
    ),
    call_overhead_tokens: int = typer.Option(
        32,
        "--call-overhead-tokens",
        help="Length bucketing: fixed cost of one model call, in padded tokens.",
    ),
    batch_workers: int = typer.Option(1, "--batch-workers", help="Threads running batches."),
    threads: Threads = None,
    providers: Providers = None,
    ort_spinning: bool = typer.Option(
        False,
        "--ort-spinning/--no-ort-spinning",
        help="Let ONNX Runtime threads spin between calls (off: they starve the event loop).",
    ),
    public_key: PublicKey = None,
    key_source: KeySource = None,
    docs: DocsMode = typer.Option(
        DocsMode.ON, help="OpenAPI docs: on (key needed), off, or public (no key)."
    ),
    cors_origin: list[str] = typer.Option(
        [], "--cors-origin", help="Allow this browser origin (repeatable; none by default)."
    ),
    forwarded_allow_ips: str | None = typer.Option(
        None,
        "--forwarded-allow-ips",
        help="Proxies trusted for X-Forwarded-For (comma-separated; none by default).",
    ),
    graceful_timeout: float = typer.Option(
        30.0, help="Seconds to finish in-flight requests on SIGTERM."
    ),
    access_log: bool = typer.Option(
        True, "--access-log/--no-access-log", help="Log one line per request (never its text)."
    ),
    log_level: LogLevel = typer.Option(
        LogLevel.INFO, case_sensitive=False, help="Server log level."
    ),
    ray: bool = typer.Option(
        False, "--ray", help="Serve as Ray Serve replicas (the `ray` extra); each verifies the "
        "bundle; limits, audit log and metrics are shared."
    ),
    replicas: int = typer.Option(2, "--replicas", help="--ray: number of replicas."),
    autoscale: str | None = typer.Option(
        None, "--autoscale", metavar="MIN..MAX", help="--ray: autoscale between MIN and MAX."
    ),
    address: str | None = typer.Option(
        None, "--address", metavar="auto|ray://HOST:PORT",
        help="--ray: cluster to join (default: start a local one).",
    ),
    cpus_per_replica: float = typer.Option(
        1.0, "--cpus-per-replica", help="--ray: CPUs Ray reserves for each replica."
    ),
) -> None:
    """Serve a bundle or a model repository over HTTP(S): /v1, KServe V2, OpenAI and TEI
    endpoints, keys, limits, audit log; a repository's versions are swapped in live."""
    from onnxguard.serve.server import run_server
    from onnxguard.serve.settings import (
        AuditSettings,
        BatchSettings,
        Limits,
        RateLimit,
        ServeConfig,
        TLSSettings,
        parse_size,
    )

    if (tls_cert is None) != (tls_key is None):
        raise UsageError("--tls-cert and --tls-key go together")
    tls = None
    if tls_cert is not None and tls_key is not None:
        password = None
        if tls_key_password_env:
            password = os.environ.get(tls_key_password_env)
            if not password:
                raise UsageError(f"environment variable {tls_key_password_env} is not set")
        tls = TLSSettings(tls_cert, tls_key, password, tls_client_ca)
    elif tls_client_ca is not None:
        raise UsageError("--tls-client-ca needs --tls-cert and --tls-key")
    config = ServeConfig(
        bundle=bundle,
        host=host,
        port=port,
        model_name=model_name,
        default_model=default_model,
        repository_poll_s=repository_poll,
        drift_window=drift_window,
        api_keys_file=api_keys_file,
        allow_unauthenticated=allow_unauthenticated,
        rate_limit=RateLimit.parse(rate_limit),
        token_limit=RateLimit.parse(token_limit, "--token-limit"),
        audit=AuditSettings(
            path=audit_log,
            max_bytes=parse_size(audit_max_bytes, "--audit-max-bytes"),
            keep=audit_keep,
            fsync=audit_fsync,
        ),
        tls=tls,
        limits=Limits(
            max_body_bytes=parse_size(max_body, "--max-body"),
            max_texts=max_texts,
            max_chars=max_chars,
            max_tokens=max_tokens,
            body_timeout_s=body_timeout,
            max_connections=max_connections,
            max_connections_per_client=max_connections_per_client,
            header_timeout_s=header_timeout,
            auth_failures_per_minute=auth_failures_per_minute,
        ),
        batching=BatchSettings(
            max_batch=max_batch,
            max_wait_ms=max_wait_ms,
            max_batch_tokens=max_batch_tokens,
            queue_size=queue_size,
            timeout_s=timeout,
            min_fill=min_fill,
            call_overhead_tokens=call_overhead_tokens,
            workers=batch_workers,
        ),
        docs=docs,
        cors_origins=tuple(cors_origin),
        public_key=public_key,
        key_source=key_source,
        providers=tuple(p for p in providers.split(",") if p.strip()) if providers else None,
        threads=threads,
        ort_spinning=ort_spinning,
        graceful_timeout_s=graceful_timeout,
        forwarded_allow_ips=tuple(
            ip.strip() for ip in (forwarded_allow_ips or "").split(",") if ip.strip()
        ),
        access_log=access_log,
        log_level=log_level,
    )
    if ray:
        from onnxguard.serve.ray_serve import RayOptions, run_ray_service

        run_ray_service(config, RayOptions(
            address=address, replicas=replicas, cpus_per_replica=cpus_per_replica,
            autoscale=RayOptions.parse_autoscale(autoscale) if autoscale else None,
        ))
        return
    if autoscale is not None or address is not None:
        raise UsageError("--autoscale and --address need --ray", hint="add --ray")
    run_server(config)


@apikey_app.command("new")
def apikey_new_command(
    key_id: str = typer.Option(..., "--id", help="Key id: names the client in the audit log."),
    scopes: str = typer.Option("infer", help="Comma-separated: infer, metrics, admin."),
    models: str | None = typer.Option(
        None, help="Comma-separated model names this key may use (a repository); default: all."
    ),
    keys_file: Path | None = typer.Option(
        None, "--keys-file", help="Append the line to this keys file (created mode 0600)."
    ),
    as_json: Json = False,
) -> None:
    """Make a new API key: prints the secret (once) and the line for the keys file."""
    from onnxguard.serve.auth import (
        append_key_line,
        check_models,
        check_scopes,
        generate_secret,
        key_line,
    )

    wanted = check_scopes(scopes.split(","))
    allowed = check_models(models.split(",")) if models is not None else None
    secret = generate_secret()
    line = key_line(key_id, secret, wanted, allowed)
    if keys_file is not None:
        append_key_line(keys_file, line)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "id": key_id,
                    "secret": secret,
                    "line": line,
                    "scopes": sorted(wanted),
                    "models": sorted(allowed) if allowed is not None else None,
                    "keys_file": str(keys_file) if keys_file else None,
                }
            )
        )
        return
    console(stderr=True).print(
        f"API key [bold]{key_id}[/] ({', '.join(sorted(wanted))}); the secret "
        "is shown once and stored nowhere:",
        highlight=False,
    )
    typer.echo(secret)
    if keys_file is not None:
        console(stderr=True).print(f"added to {keys_file}", highlight=False)
    else:
        console(stderr=True).print("add this line to the API keys file:", highlight=False)
        typer.echo(line)


@audit_app.command("verify")
def audit_verify_command(
    log: Path = typer.Argument(..., help="The audit log (the path given to --audit-log)."),
    rotated: bool = typer.Option(
        True, "--rotated/--no-rotated", help="Also check the rotated files and their links."
    ),
    as_json: Json = False,
) -> None:
    """Check every record's hash and the chain; exit 7 if anything was edited or deleted."""
    from onnxguard.serve.audit import AuditChainError, rotated_files, verify_chain

    if log.is_dir():
        raise UsageError(
            f"{log} is a directory, not an audit log",
            hint="pass the file given to `serve --audit-log`",
        )
    if not log.exists() and not rotated_files(log):
        raise PathNotFoundError(
            f"audit log {log} does not exist", hint="pass the file given to `serve --audit-log`"
        )
    report = verify_chain(log, include_rotated=rotated)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        for problem in report.problems:
            console(stderr=True).print(f"✗ {problem}", markup=False)
        state = (
            "closed by a clean shutdown"
            if report.closed
            else "open (server running, or it stopped without a clean shutdown)"
        )
        console(stderr=True).print(
            f"{report.records} records ({report.requests} requests) in {len(report.files)} "
            f"file(s), seq {report.first_seq}..{report.last_seq}; {state}; "
            f"{'complete from the first record' if report.complete else 'older files pruned'}",
            highlight=False,
        )
        if report.head:
            typer.echo(f"head {report.head}")
    if not report.ok:
        raise AuditChainError(
            f"audit log {log} does not verify: {len(report.problems)} problem(s)",
            hint="records were edited, deleted or reordered; keep this copy as evidence",
        )


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_command)
    app.add_typer(apikey_app, name="apikey")
    app.add_typer(audit_app, name="audit")
