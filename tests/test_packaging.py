"""Packaging and import boundaries (docs/packaging.md).

- the wheel installs only `fvlm` and `fvlm_*` top-level names, with the entry points that name them
- lmms-eval finds fvlm's plugin from a directory that holds its own `eval/` package
- `fvlm demo` goes through the `fvlm.commands` entry point, and says which extra to install
- by static analysis: fvlm/ imports no app, fvlm/kernels/ imports nothing from fvlm, only the CLI
  reaches into fvlm/shapesqa/, fvlm/ has no import cycle, and the apps import themselves relatively
"""

from __future__ import annotations

import ast
import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
APPS = ("trainer", "eval", "demo", "benchmarks")
SOURCES = ("pyproject.toml", "README.md", "fvlm", "trainer", "eval", "demo", "benchmarks")


# ---- the wheel ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    """The wheel built from a copy of the sources (setuptools keeps stale files in an in-tree build/)."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copy2(path, src / name)
    # the installed setuptools when there is one (fast, offline), else pip's isolated build env
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    cmd = [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", *isolation, "-q", "-w", str(root / "dist")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (found,) = (root / "dist").glob("fvlm-*.whl")
    with zipfile.ZipFile(found) as z:
        yield z


def dist_info(wheel: zipfile.ZipFile, name: str) -> str:
    (path,) = [n for n in wheel.namelist() if n.endswith(f".dist-info/{name}")]
    return wheel.read(path).decode()


def test_wheel_installs_only_fvlm_names(wheel):
    top_level = set(dist_info(wheel, "top_level.txt").split())
    record = {line.split(",")[0].split("/")[0] for line in dist_info(wheel, "RECORD").splitlines() if line}
    installed = {n for n in record if not n.endswith(".dist-info")}
    assert top_level == installed == {"fvlm", "fvlm_trainer", "fvlm_eval", "fvlm_demo"}
    assert all(n.startswith("fvlm") for n in installed | top_level)
    names = set(wheel.namelist())
    assert {"fvlm/shapesqa/generate.py", "fvlm/shapesqa/score.py", "fvlm_eval/tasks/shapesqa/utils.py",
            "fvlm_eval/tasks/shapesqa/shapesqa.yaml", "fvlm_demo/app.py", "fvlm_trainer/run.py"} <= names


def test_wheel_entry_points_name_installed_modules(wheel):
    text = dist_info(wheel, "entry_points.txt")
    assert "fvlm = fvlm_eval.plugin:manifests" in text
    assert "demo = fvlm_demo.app:main" in text
    assert "fvlm = fvlm.cli:main" in text


# ---- the installed plugin, from a directory with its own eval/ ----------------------------------
WRONG = 'raise RuntimeError("the eval/ package of the working directory was imported")\n'


def test_lmms_eval_finds_the_plugin_next_to_a_foreign_eval_package(tmp_path):
    """What `python -m lmms_eval --model fvlm` does, run from a directory holding `eval/` (with a
    plugin.py that must not be used). Needs the current install (pip install -e .)."""
    pytest.importorskip("lmms_eval")
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "__init__.py").write_text("")
    for name in ("plugin.py", "lmms_model.py", "smolvlm.py"):
        (tmp_path / "eval" / name).write_text(WRONG)
    code = (
        "import eval, sys\n"  # the foreign package is even imported first
        "from lmms_eval.models import get_model\n"  # builds the registry from the entry points
        "from importlib.metadata import entry_points\n"
        "(ep,) = entry_points(group='lmms_eval.models', name='fvlm')\n"
        "ids = sorted(m.model_id for m in ep.load()())\n"
        "cls = get_model('fvlm')\n"
        "print(ep.value, ids, cls.__module__, sys.modules[cls.__module__].__file__, sep='\\n')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    value, ids, module, file = proc.stdout.strip().splitlines()[-4:]
    assert value == "fvlm_eval.plugin:manifests", "stale install: pip install -e . again"
    assert ids == str(["fvlm", "fvlm_chat", "smolvlm2_frames"])
    assert module == "fvlm_eval.lmms_model"
    assert tmp_path not in Path(file).resolve().parents


# ---- fvlm demo ----------------------------------------------------------------------------------
def run_cli(args: list[str], prelude: str = "") -> subprocess.CompletedProcess:
    code = f"import sys\n{prelude}from fvlm.cli import main\nsys.exit(main({args!r}))\n"
    return subprocess.run([sys.executable, "-c", code], cwd=REPO / "tests", capture_output=True, text=True,
                          timeout=300, check=False)


def test_fvlm_demo_help_runs_the_registered_demo():
    pytest.importorskip("gradio")
    proc = run_cli(["demo", "--help"])
    assert proc.returncode == 0, "no fvlm.commands entry point? pip install -e . again\n" + proc.stderr[-3000:]
    assert "--port" in proc.stdout and "--share" in proc.stdout


def test_fvlm_demo_without_gradio_names_the_extra():
    proc = run_cli(["demo", "--help"], prelude="sys.modules['gradio'] = None  # as if not installed\n")
    assert proc.returncode == 2
    assert "pip install 'fvlm[demo]'" in proc.stderr


# ---- import boundaries (static) -----------------------------------------------------------------
def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, relative: bool = True) -> set[str]:
    """Every module `path` imports, at the top or inside functions, relative imports resolved (or
    left out: relative=False); for `from X import y` both X and X.y (y may be a submodule)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (relative or not node.level):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            found.add(target)
            found |= {f"{target}.{a.name}" for a in node.names}
    return found


def library_modules() -> dict[str, set[str]]:
    return {module_name(p): imports(p) for p in sorted((REPO / "fvlm").rglob("*.py"))}


def top(name: str) -> str:
    return name.split(".")[0]


def test_fvlm_imports_no_app():
    apps = set(APPS) | {f"fvlm_{a}" for a in APPS}
    bad = {m: sorted(i for i in found if top(i) in apps) for m, found in library_modules().items()}
    assert not {m: b for m, b in bad.items() if b}


def test_kernels_import_nothing_from_fvlm():
    mods = library_modules()
    kernels = {m: found for m, found in mods.items() if m.startswith("fvlm.kernels")}
    assert "fvlm.kernels.query_attention" in kernels
    bad = {m: sorted(i for i in found if top(i) == "fvlm" and not i.startswith("fvlm.kernels"))
           for m, found in kernels.items()}
    assert not {m: b for m, b in bad.items() if b}


SHAPESQA_DISPATCH = {"fvlm.cli"}  # `fvlm make-shapes` / `fvlm eval-shapes`


def test_only_the_cli_reaches_into_shapesqa():
    mods = library_modules()
    assert "fvlm.shapesqa.generate" in mods and "fvlm.shapesqa.score" in mods
    users = {m for m, found in mods.items() if not m.startswith("fvlm.shapesqa")
             and any(i == "fvlm.shapesqa" or i.startswith("fvlm.shapesqa.") for i in found)}
    assert users == SHAPESQA_DISPATCH


def test_fvlm_has_no_import_cycle():
    mods = library_modules()
    graph = {m: sorted(i for i in found if i in mods and i != m) for m, found in mods.items()}
    assert "fvlm.hub" in graph["fvlm.cli"] and "fvlm.vlm" in graph["fvlm.model"]  # the walk sees lazy imports
    done: set[str] = set()

    def visit(m: str, path: list[str]) -> None:
        if m in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(m):] + [m]))
        if m in done:
            return
        for n in graph[m]:
            visit(n, path + [m])
        done.add(m)

    for m in graph:
        visit(m, [])


def test_apps_import_themselves_relatively():
    """The same files are the clone's `eval` and the installed `fvlm_eval`: an absolute import of its
    own package would load a second copy. eval/tasks/shapesqa/utils.py is loaded by path and picks
    the name at run time."""
    bad = []
    for app in ("trainer", "eval", "demo"):
        for path in sorted((REPO / app).rglob("*.py")):
            if path == REPO / "eval" / "tasks" / "shapesqa" / "utils.py":
                continue
            names = {top(i) for i in imports(path, relative=False)}
            bad += [f"{path.relative_to(REPO)}: {n}" for n in names & {app, f"fvlm_{app}"}]
    assert not bad


def test_load_names_survive_the_cycle_break(make_model, tmp_path):
    """vlm.py no longer imports hub.py: the classmethods load through fvlm.pretrained, fvlm.load and
    fvlm.hub.load_pretrained pick the class config.json names."""
    import torch

    import fvlm
    from fvlm import hub
    from fvlm.errors import ConfigError

    for arch, cls, other in (("foveated", fvlm.FoveatedVLM, fvlm.MultiTokenVLM),
                             ("multi_token", fvlm.MultiTokenVLM, fvlm.FoveatedVLM)):
        model = make_model(architecture=arch)
        directory = model.save_pretrained(tmp_path / arch)
        loaded = [fvlm.load(directory), hub.load_pretrained(directory), cls.from_pretrained(directory)]
        assert [type(m) for m in loaded] == [cls] * 3
        for name, value in model.state_dict().items():
            assert torch.equal(loaded[2].state_dict()[name], value), name
        with pytest.raises(ConfigError, match=f"holds a {arch} model, not a {other.__name__}"):
            other.from_pretrained(directory)
