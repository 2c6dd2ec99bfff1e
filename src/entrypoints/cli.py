"""Command line: `embedding-service serve`, `models add HUB_ID --revision SHA`, `models pull NAME`,
`embed-file IN OUT`, `cache seed|migrate|stats`, `accounts create|set-tier|list`, `keygen`, `ensure-env-key`."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from pydantic import ValidationError

from adapters.metrics import MULTIPROC_DIR_VARIABLE, prepare_multiprocess_dir
from adapters.model_adding import ModelRefused, add_model
from adapters.model_lock import LockFileError, entry_of
from adapters.resilience import describe_failure
from domain.errors import DomainError, ModelIntegrityError
from domain.model import SHARED_POOL, Tier, resolve_model
from domain.ports import EmbeddingCache
from domain.use_cases import ListAccounts, RotateProviderKeys, SetTier, SignUp
from entrypoints.container import Container, build_container, use_case
from entrypoints.settings import LOG_DATEFMT, LOG_FORMAT, ConfigurationError, Settings, check_startup, configure_logging

log = logging.getLogger("entrypoints.cli")
T = TypeVar("T")


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    settings = Settings()
    try:
        check_startup(settings)
    except ConfigurationError as exc:
        log.error("%s", exc)
        return 2
    if settings.hosted and args.workers > 1 and not settings.redis_url:
        log.error(
            "hosted mode with --workers %d needs REDIS_URL: without it each process would count quotas of its own",
            args.workers,
        )
        return 2
    logging.getLogger().setLevel(settings.log_level)
    log_config = uvicorn.config.LOGGING_CONFIG | {
        "formatters": {
            name: {"()": "logging.Formatter", "fmt": LOG_FORMAT, "datefmt": LOG_DATEFMT}
            for name in ("default", "access")
        }
    }
    workers = None if args.reload else args.workers
    temporary = _metrics_across_workers(settings, workers or 1)
    try:
        uvicorn.run(
            "entrypoints.http.app:create_app",
            factory=True,
            http="entrypoints.http.protocol:GuardedHttpToolsProtocol",  # header size and slow-client limits
            host=args.host or settings.host,
            port=args.port or settings.port,
            reload=args.reload,
            reload_dirs=[str(Path(__file__).resolve().parents[1])] if args.reload else None,
            workers=workers,
            access_log=False,
            timeout_graceful_shutdown=1,  # after the drain (SHUTDOWN_DRAIN_SECONDS): what is left is cut
            timeout_keep_alive=settings.keep_alive_seconds,
            log_config=log_config,
        )
    finally:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)
    return 0


def _metrics_across_workers(settings: Settings, workers: int) -> str | None:
    """With metrics on and several worker processes, each process writes its metrics into files in one folder, and
    GET /metrics (whichever process answers) adds them up: prometheus_client's multiprocess mode, which it picks at
    import from PROMETHEUS_MULTIPROC_DIR, so that is set here, before uvicorn starts the workers. The folder is
    METRICS_MULTIPROC_DIR (emptied of earlier runs' files) or a temporary one; returns the temporary one, to remove
    once the server has stopped."""
    if not settings.metrics_enabled or workers < 2 or os.environ.get(MULTIPROC_DIR_VARIABLE):
        return None
    configured = settings.metrics_multiproc_dir
    folder = str(configured) if configured else tempfile.mkdtemp(prefix="embedding-service-metrics-")
    prepare_multiprocess_dir(folder)
    os.environ[MULTIPROC_DIR_VARIABLE] = folder
    log.info("metrics of %d worker processes are collected in %s", workers, folder)
    return None if configured else folder


def _model_settings(args: argparse.Namespace) -> Settings:
    return Settings(**({"model_path": Path(args.path)} if args.path else {}))  # type: ignore[arg-type]


def pull(args: argparse.Namespace) -> int:
    """Download and verify a built-in model or one of the models lock file (MODELS_LOCK) into MODEL_PATH."""
    settings = _model_settings(args)
    try:
        spec = resolve_model(args.name, settings.catalog())
    except KeyError as exc:
        log.error("%s", exc.args[0])
        return 2
    try:
        folder = build_container(settings).provisioner().ensure(spec)
    except Exception as exc:
        log.error("could not provision %s: %s", args.name, exc)
        return 1
    print(folder)
    return 0


def add(args: argparse.Namespace) -> int:
    """Add a model by its pin: download it from the hub at a commit, verified, and record it in MODELS_LOCK."""
    settings = _model_settings(args)
    if settings.hf_hub_offline:
        log.error("models add downloads from the hub: unset HF_HUB_OFFLINE (or set it false) for this command")
        return 2
    token = settings.hf_token.get_secret_value() if settings.hf_token else None
    try:
        spec = add_model(
            args.hub_id,
            args.revision,
            settings.model_path,
            settings.models_lock,
            name=args.name,
            endpoint=settings.hf_endpoint,
            token=token,
            trust_remote_code=args.trust_remote_code or settings.model_trust_remote_code,
            query_prompt=args.query_prompt,
            document_prompt=args.document_prompt,
            matryoshka=args.matryoshka,
        )
    except (ModelRefused, LockFileError) as exc:
        log.error("not added: %s", exc)
        return 2
    except ModelIntegrityError as exc:
        log.error("not added: %s", exc.message)
        return 1
    except Exception as exc:
        log.error("could not add %s@%s: %s", args.hub_id, args.revision, describe_failure(exc))
        return 1
    print(json.dumps(entry_of(spec), indent=2))
    log.info("%s is pinned in %s: serve it with MODEL_NAME=%s", spec.name, settings.models_lock, spec.name)
    return 0


def _sizes(value: str) -> list[int]:
    try:
        sizes = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: comma-separated sizes, e.g. 768,512,256") from None
    if not sizes:
        raise argparse.ArgumentTypeError("at least one size")
    return sizes


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


def _lines(path: Path) -> Iterator[str]:
    """The texts of a file, one per line (line ends removed); blank lines are skipped."""
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            text = line.rstrip("\r\n")
            if text.strip():
                yield text


def cache_seed(args: argparse.Namespace) -> int:
    """Embed the lines of a text file into the cache (a tenant's entries or the shared pool) with the served model."""
    from tqdm import tqdm

    settings = Settings()
    container = build_container(settings)
    tenant = SHARED_POOL if args.shared else args.tenant
    path = Path(args.file)
    try:
        with tqdm(unit="text", disable=args.no_progress, desc=f"seeding {tenant}") as bar:
            report = container.seed_cache().execute(_lines(path), tenant, progress=bar.update)
    except FileNotFoundError:
        log.error("no such file: %s", path)
        return 2
    except DomainError as exc:
        log.error("%s", exc.message)
        return 2
    except KeyboardInterrupt:
        log.warning("interrupted; every chunk stored so far is kept: run the same command again to continue")
        return 130
    except Exception as exc:
        log.error("seeding failed: %s", describe_failure(exc))
        return 1
    finally:
        container.cache_store().close()
    log.info(
        "seeded %s in %s (%s): %d lines, %d distinct texts, %d already cached, %d embedded now, %d over %d characters "
        "skipped",
        tenant,
        settings.cache_backend,
        settings.model_name,
        report.texts,
        report.distinct,
        report.already_cached,
        report.embedded,
        report.too_long,
        settings.max_input_length,
    )
    return 0


def _on_cache_store(what: str, action: Callable[[EmbeddingCache], T]) -> T | None:
    """Run `action` on the configured cache store, migrated first; None (logged) when the storage fails."""
    settings = Settings()
    store = build_container(settings).cache_store()
    try:
        store.prepare()
        return action(store)
    except Exception as exc:
        log.error("%s the %s cache failed: %s", what, settings.cache_backend, describe_failure(exc))
        return None
    finally:
        store.close()


def cache_migrate(_: argparse.Namespace) -> int:
    """Create or upgrade the cache's tables now (the server also does it at start-up)."""
    if _on_cache_store("migrating", lambda store: store.backend) is None:
        return 1
    log.info("the cache is at the latest schema")
    return 0


def cache_stats(args: argparse.Namespace) -> int:
    stats = _on_cache_store("reading", lambda store: store.stats(SHARED_POOL if args.shared else args.tenant))
    if stats is None:
        return 1
    print(f"hits={stats.hits} misses={stats.misses} entries={stats.entries}")
    return 0


def _accounts_command(action: Callable[[Container], T]) -> T | int:
    """Run an operator's account command on the service's database (migrated first); 1 (logged) when it fails."""
    settings = Settings()
    if not settings.hosted:
        log.error("accounts belong to the hosted mode: set HOSTED=true (and JWT_SECRET, DATABASE_URL as the server)")
        return 2
    container = build_container(settings)
    try:
        container.database().prepare()
        return action(container)
    except DomainError as exc:
        log.error("%s", exc.message)
        return 2
    except Exception as exc:
        log.error("the account database failed: %s", describe_failure(exc))
        return 1
    finally:
        container.database().close()


def _password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    import getpass

    first = getpass.getpass("password for the new account: ")
    if getpass.getpass("again: ") != first:
        raise SystemExit("the passwords differ")
    return first


def accounts_create(args: argparse.Namespace) -> int:
    password = _password(args)

    def create(container: Container) -> int:
        created = asyncio.run(
            use_case(container, SignUp).execute(args.email, password, Tier(args.tier), by_operator=True)
        )
        print(f"user_id={created.account.id} tier={created.account.tier} api_key={created.api_key}")
        return 0

    return _code(_accounts_command(create))


def accounts_set_tier(args: argparse.Namespace) -> int:
    def set_tier(container: Container) -> int:
        account = use_case(container, SetTier).execute(args.email, Tier(args.tier))
        print(f"{account.email} {account.id} tier={account.tier}")
        return 0

    return _code(_accounts_command(set_tier))


def accounts_list(_: argparse.Namespace) -> int:
    def listing(container: Container) -> int:
        for account in use_case(container, ListAccounts).execute():
            print(f"{account.id}\t{account.email}\t{account.tier}\t{account.created_at.isoformat()}")
        return 0

    return _code(_accounts_command(listing))


def _code(result: object) -> int:
    return result if isinstance(result, int) else 1


def providers_rotate_keys(_: argparse.Namespace) -> int:
    """Re-encrypt every stored provider key under the first key of ENCRYPTION_KEY."""

    def rotate(container: Container) -> int:
        report = use_case(container, RotateProviderKeys).execute()
        print(f"re-encrypted {report.providers} provider keys under the first key of ENCRYPTION_KEY")
        return 0

    return _code(_accounts_command(rotate))


def keygen(args: argparse.Namespace) -> int:
    if args.fernet:
        from adapters.secrets import new_fernet_key

        print(new_fernet_key())
    else:
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
    add_cmd = models_cmd.add_parser(
        "add",
        help="pin a hub model: download it at a commit, verified, and record it in the models lock file",
        description="Downloads the files sentence-transformers reads at the commit SHA (HF_ENDPOINT, HF_TOKEN), "
        "checks each against the checksum the hub lists, and records in MODELS_LOCK the sha256 of every file and "
        "the model's dimension, maximum sequence length, pooling, prompts and Matryoshka sizes; MODEL_NAME (or "
        "MODELS) can then name it. A model running code of its own needs MODEL_TRUST_REMOTE_CODE=true or "
        "--trust-remote-code.",
    )
    add_cmd.add_argument("hub_id", metavar="HUB_ID", help="e.g. BAAI/bge-small-en-v1.5")
    add_cmd.add_argument("--revision", required=True, metavar="SHA", help="the full 40-character commit sha")
    add_cmd.add_argument("--name", help="the name MODEL_NAME uses (default: HUB_ID's last part)")
    add_cmd.add_argument("--query-prompt", metavar="P", help="prefix of queries (replaces the declared one; '' none)")
    add_cmd.add_argument("--document-prompt", metavar="P", help="prefix of documents (replaces the declared one)")
    add_cmd.add_argument(
        "--matryoshka", type=_sizes, metavar="N,N,...", help="Matryoshka sizes (replaces those declared)"
    )
    add_cmd.add_argument("--trust-remote-code", action="store_true", help="as MODEL_TRUST_REMOTE_CODE=true")
    add_cmd.add_argument("--path", help="model folder root (default: MODEL_PATH)")
    add_cmd.set_defaults(func=add)
    pull_cmd = models_cmd.add_parser("pull", help="download and verify a model ahead of time")
    pull_cmd.add_argument("name", help="a built-in model or one of the models lock file, by name or hub id")
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

    cache = commands.add_parser("cache", help="the embedding cache (CACHE_BACKEND, DATA_DIR / CACHE_URL)")
    cache_cmd = cache.add_subparsers(dest="cache_command", required=True)
    seed_cmd = cache_cmd.add_parser(
        "seed",
        help="embed the lines of a text file into the cache ahead of traffic; resumable",
        description="One text per line (blank lines skipped). Uses the same model, backend and precision settings as "
        "`serve`, so the entries are the ones the server looks up. Texts already cached are skipped.",
    )
    seed_cmd.add_argument("file", metavar="FILE.txt")
    whose = seed_cmd.add_mutually_exclusive_group(required=True)
    whose.add_argument("--tenant", help="the tenant whose private entries to fill (e.g. peoplepad, default, acme)")
    whose.add_argument("--shared", action="store_true", help="fill the shared pool (read when CACHE_SHARED_POOL=true)")
    seed_cmd.add_argument("--no-progress", action="store_true", help="no progress bar")
    seed_cmd.set_defaults(func=cache_seed)
    migrate_cmd = cache_cmd.add_parser("migrate", help="create or upgrade the cache tables now")
    migrate_cmd.set_defaults(func=cache_migrate)
    stats_cmd = cache_cmd.add_parser("stats", help="hits, misses and entries of a tenant")
    stats_whose = stats_cmd.add_mutually_exclusive_group(required=True)
    stats_whose.add_argument("--tenant")
    stats_whose.add_argument("--shared", action="store_true")
    stats_cmd.set_defaults(func=cache_stats)

    accounts = commands.add_parser("accounts", help="hosted-mode accounts (HOSTED=true; DATABASE_URL or DATA_DIR)")
    accounts_cmd = accounts.add_subparsers(dest="accounts_command", required=True)
    create_cmd = accounts_cmd.add_parser(
        "create", help="create an account (even with SIGNUP_ENABLED=false) and print its first API key"
    )
    create_cmd.add_argument("email")
    create_cmd.add_argument("--tier", choices=[t.value for t in Tier], default=Tier.FREE.value)
    create_cmd.add_argument(
        "--password-stdin", action="store_true", help="read the password from the first line of stdin (no prompt)"
    )
    create_cmd.set_defaults(func=accounts_create)
    tier_cmd = accounts_cmd.add_parser("set-tier", help="move an account to another tier")
    tier_cmd.add_argument("email")
    tier_cmd.add_argument("tier", choices=[t.value for t in Tier])
    tier_cmd.set_defaults(func=accounts_set_tier)
    list_cmd = accounts_cmd.add_parser("list", help="id, email, tier and creation time of every account")
    list_cmd.set_defaults(func=accounts_list)

    providers = commands.add_parser("providers", help="hosted-mode bring-your-own-key providers")
    providers_cmd = providers.add_subparsers(dest="providers_command", required=True)
    rotate_cmd = providers_cmd.add_parser(
        "rotate-keys", help="re-encrypt every stored provider key under the first key of ENCRYPTION_KEY"
    )
    rotate_cmd.set_defaults(func=providers_rotate_keys)

    keygen_cmd = commands.add_parser("keygen", help="print a new random API key (or JWT_SECRET)")
    keygen_cmd.add_argument("--fernet", action="store_true", help="a Fernet key for ENCRYPTION_KEY instead")
    keygen_cmd.set_defaults(func=keygen)
    env_cmd = commands.add_parser("ensure-env-key", help="make sure the env file holds an API key (dev setup)")
    env_cmd.add_argument("--env-file", default=".env")
    env_cmd.add_argument("--template", default=".env.example")
    env_cmd.set_defaults(func=ensure_env_key)
    return root


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    args = parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors())
        log.error("invalid configuration: %s", problems)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
