"""Command line: `embedding-service serve`, `models pull NAME`, `embed-file IN OUT`, `keygen`, `ensure-env-key`."""

from __future__ import annotations

import argparse
import logging
import secrets
import sys
from pathlib import Path

from domain.model import KNOWN_MODELS, resolve_model
from entrypoints.container import build_container
from entrypoints.settings import LOG_DATEFMT, LOG_FORMAT, ConfigurationError, Settings, check_startup, configure_logging

log = logging.getLogger("entrypoints.cli")


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    settings = Settings()
    try:
        check_startup(settings)
    except ConfigurationError as exc:
        log.error("%s", exc)
        return 2
    logging.getLogger().setLevel(settings.log_level)
    log_config = uvicorn.config.LOGGING_CONFIG | {
        "formatters": {
            name: {"()": "logging.Formatter", "fmt": LOG_FORMAT, "datefmt": LOG_DATEFMT}
            for name in ("default", "access")
        }
    }
    uvicorn.run(
        "entrypoints.http.app:create_app",
        factory=True,
        host=args.host or settings.host,
        port=args.port or settings.port,
        reload=args.reload,
        reload_dirs=[str(Path(__file__).resolve().parents[1])] if args.reload else None,
        workers=None if args.reload else args.workers,
        access_log=False,
        log_config=log_config,
    )
    return 0


def pull(args: argparse.Namespace) -> int:
    overrides: dict[str, object] = {"model_name": resolve_model(args.name).name}
    if args.path:
        overrides["model_path"] = Path(args.path)
    settings = Settings(**overrides)  # type: ignore[arg-type]
    container = build_container(settings)
    try:
        folder = container.provisioner().ensure(container.model_spec())
    except Exception as exc:
        log.error("could not provision %s: %s", args.name, exc)
        return 1
    print(folder)
    return 0


def embed_file(args: argparse.Namespace) -> int:
    """Embed IN.jsonl into OUT.jsonl with the service (or in-process), resuming where a previous run stopped."""
    from embedding_client import EmbeddingClient, EmbeddingClientError
    from embedding_client.jobs import EmbedFileJob

    try:
        job = EmbedFileJob(Path(args.input), Path(args.output))
        model = args.model or job.output_model
        with EmbeddingClient(
            service_url=args.service_url,
            fallback_to_local=not args.no_fallback,
            timeout=args.timeout,
            model=model,
            max_retries=args.max_retries,
        ) as client:
            report = job.run(client, chunk_size=args.chunk_size, progress=not args.no_progress)
    except FileNotFoundError as exc:
        log.error("no such file: %s", exc.filename)
        return 2
    except EmbeddingClientError as exc:
        log.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        log.warning("interrupted; every record written so far is kept: run the same command again to resume")
        return 130
    sources = ", ".join(f"{n} by {source}" for source, n in sorted(report.by_source.items())) or "none new"
    log.info(
        "%s: %d records with %s; %d embedded now (%s), %d were already done",
        args.output,
        report.total,
        report.model,
        report.embedded,
        sources,
        report.already_done,
    )
    return 0


def keygen(_: argparse.Namespace) -> int:
    print(secrets.token_urlsafe(32))
    return 0


KEY_VARIABLES = ("EMBEDDING_API_KEY", "PEOPLEPAD_CLIENT_KEY")


def ensure_env_key(args: argparse.Namespace) -> int:
    """Create the env file from its template if missing; give it a new EMBEDDING_API_KEY if it has no key."""
    env_file, template = Path(args.env_file), Path(args.template)
    if not env_file.exists():
        env_file.write_text(template.read_text() if template.exists() else "")
    lines = env_file.read_text().splitlines()
    configured = {
        name.strip(): value.strip()
        for name, sep, value in (line.partition("=") for line in lines if not line.lstrip().startswith("#"))
        if sep
    }
    if any(configured.get(name) for name in KEY_VARIABLES):
        return 0
    key = secrets.token_urlsafe(32)
    if "EMBEDDING_API_KEY" in configured:
        lines = [f"EMBEDDING_API_KEY={key}" if line.startswith("EMBEDDING_API_KEY=") else line for line in lines]
    else:
        lines.append(f"EMBEDDING_API_KEY={key}")
    env_file.write_text("\n".join(lines) + "\n")
    env_file.chmod(0o600)
    print(f"{env_file} had no API key; generated a development key (shown only this once):\n  {key}")
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="embedding-service", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True)

    serve_cmd = commands.add_parser("serve", help="serve the HTTP API (settings from env and .env)")
    serve_cmd.add_argument("--host")
    serve_cmd.add_argument("--port", type=int)
    serve_cmd.add_argument("--reload", action="store_true", help="restart on source changes (development)")
    serve_cmd.add_argument(
        "--workers", type=int, default=1, help="server processes, each loading its own model copy (default 1)"
    )
    serve_cmd.set_defaults(func=serve)

    models = commands.add_parser("models", help="manage model weights under MODEL_PATH")
    models_cmd = models.add_subparsers(dest="models_command", required=True)
    pull_cmd = models_cmd.add_parser("pull", help="download and verify a model ahead of time")
    pull_cmd.add_argument("name", choices=sorted({a for s in KNOWN_MODELS.values() for a in s.aliases}))
    pull_cmd.add_argument("--path", help="model folder root (default: MODEL_PATH)")
    pull_cmd.set_defaults(func=pull)

    file_cmd = commands.add_parser(
        "embed-file",
        help="embed a JSONL file of {id, text} lines into {id, model, embedding} lines; resumable",
        description="Uses EMBEDDING_SERVICE_URL / EMBEDDING_API_KEY, falling back to the same model in-process. "
        "Re-running after a crash or Ctrl-C continues where it stopped.",
    )
    file_cmd.add_argument("input", metavar="IN.jsonl")
    file_cmd.add_argument("output", metavar="OUT.jsonl")
    file_cmd.add_argument("--model", help="model to embed with (default: OUT's model, EMBEDDING_MODEL, the service's)")
    file_cmd.add_argument("--service-url", help="default: EMBEDDING_SERVICE_URL")
    file_cmd.add_argument("--no-fallback", action="store_true", help="fail instead of embedding in-process")
    file_cmd.add_argument("--chunk-size", type=int, default=256, help="records written (and fsync'ed) at a time")
    file_cmd.add_argument("--timeout", type=float, default=60.0, help="seconds per HTTP request")
    file_cmd.add_argument("--max-retries", type=int, default=10, help="retries of 429/503 answers")
    file_cmd.add_argument("--no-progress", action="store_true", help="no progress bar")
    file_cmd.set_defaults(func=embed_file)

    keygen_cmd = commands.add_parser("keygen", help="print a new random API key")
    keygen_cmd.set_defaults(func=keygen)
    env_cmd = commands.add_parser("ensure-env-key", help="make sure the env file holds an API key (dev setup)")
    env_cmd.add_argument("--env-file", default=".env")
    env_cmd.add_argument("--template", default=".env.example")
    env_cmd.set_defaults(func=ensure_env_key)
    return root


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    args = parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
