"""The hexagon's boundaries, checked on the source: which layer may import what."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.support import ENCRYPTION_KEY

SRC = Path(__file__).resolve().parents[2] / "src"


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return {name.split(".")[0] for name in names} | names


def files(package: str) -> list[Path]:
    return sorted((SRC / package).rglob("*.py"))


@pytest.mark.parametrize("path", files("domain"), ids=lambda p: str(p.relative_to(SRC)))
def test_domain_imports_no_framework_or_outer_layer(path: Path) -> None:
    forbidden = {
        "adapters",
        "entrypoints",
        "fastapi",
        "starlette",
        "torch",
        "sentence_transformers",
        "transformers",
        "pydantic",
        "dependency_injector",
        "huggingface_hub",
        # drivers and infrastructure libraries: the adapters' business
        "sqlalchemy",
        "psycopg",
        "psycopg2",
        "asyncpg",
        "sqlite3",
        "redis",
        "alembic",
        "bcrypt",
        "jwt",
        "limits",
        "cryptography",
        "httpx",
        "prometheus_client",
        "onnxruntime",
        "openvino",
    }
    assert imported_modules(path).isdisjoint(forbidden), path


@pytest.mark.parametrize("path", files("entrypoints/http"), ids=lambda p: str(p.relative_to(SRC)))
def test_http_entrypoint_never_imports_adapters_or_ml(path: Path) -> None:
    forbidden = {"adapters", "torch", "sentence_transformers", "transformers"}
    assert imported_modules(path).isdisjoint(forbidden), path


def test_only_the_sentence_transformer_adapter_imports_torch() -> None:
    importing = {
        str(p.relative_to(SRC)) for p in SRC.rglob("*.py") if imported_modules(p) & {"torch", "sentence_transformers"}
    }
    assert importing == {"adapters/sentence_transformer_embedder.py"}


@pytest.mark.parametrize("path", files("adapters"), ids=lambda p: str(p.relative_to(SRC)))
def test_adapters_do_not_import_entrypoints(path: Path) -> None:
    assert "entrypoints" not in imported_modules(path)


@pytest.mark.parametrize("backend", ["fake", "sentence_transformers"])
def test_building_the_app_and_host_does_not_import_torch(backend: str) -> None:
    """torch loads only inside the model-loading thread, so /health can answer 503 while it does."""
    import subprocess
    import sys

    code = (
        "import sys; from entrypoints.http.app import create_app; from entrypoints.settings import Settings;"
        f"app = create_app(Settings(_env_file=None, embedder_backend='{backend}', allow_unauthenticated=True));"
        "app.state.container.host(); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("path", files("embedding_client"), ids=lambda p: str(p.relative_to(SRC)))
def test_client_library_never_imports_the_http_server_or_ml(path: Path) -> None:
    forbidden = {"fastapi", "starlette", "uvicorn", "entrypoints.http", "torch", "sentence_transformers"}
    assert imported_modules(path).isdisjoint(forbidden), path


def test_importing_the_client_loads_no_torch_until_the_local_fallback_runs() -> None:
    import subprocess
    import sys

    code = "import sys, embedding_client; print('torch' in sys.modules, 'fastapi' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"


@pytest.mark.parametrize(("cache", "loaded"), [("none", False), ("memory", False), ("sqlite", True)])
def test_sqlalchemy_loads_only_for_a_sql_cache(cache: str, loaded: bool, tmp_path: Path) -> None:
    import subprocess
    import sys

    code = (
        "import sys; from entrypoints.http.app import create_app; from entrypoints.settings import Settings;"
        f"app = create_app(Settings(_env_file=None, embedder_backend='fake', allow_unauthenticated=True,"
        f" cache_backend='{cache}', data_dir='{tmp_path}'));"
        "app.state.container.cache(); print('sqlalchemy' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(loaded)


def test_redis_bcrypt_and_jwt_load_only_for_the_hosted_mode(tmp_path: Path) -> None:
    import subprocess
    import sys

    def loaded(hosted: bool) -> str:
        secrets = f"jwt_secret='{'s' * 40}', encryption_key='{ENCRYPTION_KEY}'"
        extra = f", hosted=True, {secrets}, redis_url='redis://127.0.0.1:6379/0'" if hosted else ""
        code = (
            "import sys; from fastapi.testclient import TestClient; from entrypoints.http.app import create_app;"
            "from entrypoints.settings import Settings;"
            f"app = create_app(Settings(_env_file=None, embedder_backend='fake', allow_unauthenticated=True,"
            f" data_dir='{tmp_path}'{extra}));"
            "client = TestClient(app).__enter__();"
            "client.post('/v1/auth/login', json={'email': 'a@b.co', 'password': 'x'});"
            "print(*(name in sys.modules for name in ('redis', 'bcrypt', 'jwt')))"
        )
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()

    assert loaded(False) == "False False False"
    assert loaded(True) == "True True True"


def response_bodies(path: Path) -> list[ast.expr]:
    """The body argument of every `...JSONResponse(body, ...)` built in a module."""
    bodies = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id.endswith("JSONResponse"):
            content = next((k.value for k in node.keywords if k.arg == "content"), None)
            bodies.append(node.args[0] if node.args else content)
    return [body for body in bodies if body is not None]


@pytest.mark.parametrize("path", files("entrypoints/http/routes"), ids=lambda p: str(p.relative_to(SRC)))
def test_routes_send_the_bodies_their_schemas_render(path: Path) -> None:
    """Each dialect renders its bodies in one function beside its schema: a route hands over what a `render_*`
    function of its schemas built (or a name bound to it), never a body of its own making."""
    for body in response_bodies(path):
        rendered = isinstance(body, ast.Call) and isinstance(body.func, ast.Name) and body.func.id.startswith("render_")
        assert rendered or isinstance(body, ast.Name), f"{path.name}:{body.lineno}: {ast.unparse(body)}"
