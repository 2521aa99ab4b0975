"""The layout of the package: imports point one way, one idea per module, and what users install is the whole tree.

The layers below are the package's map, bottom to top. A module may import only modules of lower layers, so the
import graph has no cycle and no upward arrow, and the file name in a stack trace says where you are: the G side of
−η·A·K·G in ``updates``, A and K in ``kernel``, the step against its prediction in ``dynamics``.
"""
import ast
import importlib.metadata
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "tinyld"

LAYERS = (
    ("runtime",),  # checks, errors, devices, versions
    ("tokenizers", "blocks"),  # text ↔ ids; the modern decoder's parts (RMSNorm, RoPE, SwiGLU, KV cache)
    ("model",),  # the GPT
    ("tinyld",),  # the package itself re-exports GPT, GPTConfig and the errors
    ("data", "gguf"),  # examples, batches with prompt masks, data sources; a real LLM from a GGUF file
    ("losses", "world", "choose"),  # losses with their residuals; the synthetic world; --model NAME
    ("rl",),  # RL's losses (GRPO, Dr. GRPO) with their residuals, and its batches
    ("preference", "reasoning", "squeeze", "evaluate", "forecast"),  # pairs + reference; measurements
    ("updates", "probes", "rl_data"),  # G: rows and updates; probe sets and the tracker; RL's on-policy samples
    ("kernel",),  # A and K
    ("dynamics", "classify"),  # one step against −η·A·K·G; the digits classifier
    ("distributed", "checkpoints"),  # torchrun helpers; save, load, the folder lock
    ("train",),  # the loop
    ("pretrained", "bench", "plots", "render", "explain", "browser"),  # cached base models; benchmarks; figures;
    # rendered lessons; the per-pair numbers behind explain; a page in a headless browser
    ("demo",),  # the main job
    ("experiments", "experiments.common", "experiments.runfolder"),  # what the experiments share; a run's life
    ("experiments.kit",),  # the kit every experiment uses: the run folder, header, claims, tables, JSON
    ("experiments.sft_dynamics.config", "experiments.sft_dynamics.claims",  # each experiment is a package: its
     "experiments.dpo_dynamics.config", "experiments.dpo_dynamics.claims",  # config and claims, its pieces, one
     "experiments.forecasting.config", "experiments.explain.config", "experiments.rl_dynamics.config",
     "experiments.explain.report"),  # module per part, the command, and the package that names them
    ("experiments.sft_dynamics.tracking", "experiments.sft_dynamics.attribution", "experiments.dpo_dynamics.stages",
     "experiments.forecasting.sweep"),
    ("experiments.rl_dynamics.tracking", "experiments.rl_dynamics.claims"),
    ("experiments.sft_dynamics.conditions", "experiments.dpo_dynamics.dynamics", "experiments.dpo_dynamics.extend",
     "experiments.dpo_dynamics.on_policy", "experiments.dpo_dynamics.conditions", "experiments.forecasting.curate",
     "experiments.forecasting.ches"),
    ("experiments.sft_dynamics.command", "experiments.dpo_dynamics.command", "experiments.forecasting.command",
     "experiments.explain.command", "experiments.rl_dynamics.command"),
    ("experiments.sft_dynamics", "experiments.dpo_dynamics", "experiments.forecasting", "experiments.explain",
     "experiments.rl_dynamics"),
    ("integrations", "integrations.trl"),  # the probes inside TRL's trainers (an extra)
    ("commands",),  # the command line's tables: each command's flags from its config
    ("__main__",),  # the command line
)
LAYER = {name: k for k, names in enumerate(LAYERS) for name in names}
LAZY_OK = {"plots"}  # matplotlib is optional and heavy: imported where a figure is drawn
LINES = {"dynamics": 350, "updates": 350, "kernel": 350, "data": 350, "preference": 350}  # and 450 for the rest
FUNCTION_LINES = 70


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    name = ".".join(rel.parts)
    return "tinyld" if name == "__init__" else name.removesuffix(".__init__")


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def tinyld_imports(path: Path) -> list[tuple[str, list[str], bool, int]]:
    """(imported module, names, inside a function?, line) for every import of a tinyld module in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    in_function = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                   for n in ast.walk(f)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and \
                node.module.split(".")[0] == "tinyld":
            target = node.module.removeprefix("tinyld.") if node.module != "tinyld" else "tinyld"
            out.append((target, [a.name for a in node.names], id(node) in in_function, node.lineno))
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "tinyld":
                    target = a.name.removeprefix("tinyld.") if a.name != "tinyld" else "tinyld"
                    out.append((target, [], id(node) in in_function, node.lineno))
    return out


def test_every_module_has_a_layer():
    assert sorted(set(modules()) - set(LAYER)) == [], "a new module: give it a place in LAYERS"
    assert sorted(set(LAYER) - set(modules())) == [], "LAYERS names a module that is gone"


def test_imports_point_down_only():
    """No cycle and no upward arrow: each import goes to a lower layer (the same layer counts as up)."""
    up = []
    for name, path in modules().items():
        for target, names, _, line in tinyld_imports(path):
            if LAYER[target] >= LAYER[name]:
                up.append(f"{path.relative_to(ROOT)}:{line} imports {target} (layer {LAYER[target]} ≥ {LAYER[name]})")
    assert up == []


def test_no_import_inside_a_function_dodges_the_order():
    """Function-level imports of tinyld modules only where loading lazily is the point: figures (matplotlib) and
    the command line, whose subcommands load what they run."""
    lazy = [f"{path.relative_to(ROOT)}:{line} imports {target} inside a function"
            for name, path in modules().items() if name != "__main__"
            for target, _, inside, line in tinyld_imports(path) if inside and target not in LAZY_OK]
    assert lazy == []


def test_the_core_never_imports_plots():
    users = sorted(name for name, path in modules().items()
                   if any(t == "plots" for t, *_ in tinyld_imports(path)))
    assert all(u.startswith("experiments.") for u in users), users


@pytest.mark.parametrize("where", ["tinyld", "tests", "lessons"])
def test_no_private_name_crosses_a_module(where):
    """``from tinyld.x import _name`` and ``tinyld.x._name`` reach into a module's insides: make the name public or
    keep the use inside its module."""
    bad = []
    for path in sorted((ROOT / where).rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "tinyld":
                bad += [f"{path.relative_to(ROOT)}:{node.lineno} imports {a.name} from {node.module}"
                        for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
            elif isinstance(node, ast.Import):
                aliases.update({a.asname or a.name: a.name for a in node.names if a.name.split(".")[0] == "tinyld"})
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                base = node.value
                dotted = []
                while isinstance(base, ast.Attribute):
                    dotted.insert(0, base.attr)
                    base = base.value
                if isinstance(base, ast.Name) and base.id in aliases:
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno} uses {'.'.join([base.id, *dotted])}"
                               f".{node.attr}")
    assert bad == []


def test_modules_fit_in_one_sitting():
    """The house style's one sitting: ≤ 350 lines for the engine and the data, ≤ 450 for every other module, the
    experiments' too (an experiment that outgrows one module is a package: one module per part)."""
    long = {}
    for name, path in modules().items():
        n = len(path.read_text(encoding="utf-8").splitlines())
        if n > LINES.get(name, 450):
            long[name] = n
    assert long == {}


def test_no_long_functions():
    long = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} has {n} lines")
    assert long == []


# ---------------------------------------------------------------------------------------------------------------
# what users install
# ---------------------------------------------------------------------------------------------------------------


def installed_files() -> set[str] | None:
    """The package files the installed distribution holds (from its RECORD in site-packages), or None for an
    editable install, whose RECORD lists a path hook instead of the modules."""
    site = [sysconfig.get_paths()[k] for k in ("purelib", "platlib")]
    dists = [d for d in importlib.metadata.distributions(path=site) if d.metadata["Name"] == "tinyld"]
    if not dists:
        pytest.skip("tinyld is not installed in this environment (install it: pip install .)")
    files = {str(f).replace("\\", "/") for f in dists[0].files or []}
    return {f for f in files if f.startswith("tinyld/")} or None


def built_wheel_files(tmp: Path) -> set[str]:
    """The files a wheel built from this tree holds (for an editable install, where nothing else says)."""
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(PACKAGE, src / "tinyld", ignore=shutil.ignore_patterns("__pycache__"))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(tmp / "wheel"), str(src)], capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        pytest.skip(f"could not build a wheel here (setuptools missing?): {r.stderr[-300:]}")
    (wheel,) = (tmp / "wheel").glob("*.whl")
    return set(zipfile.ZipFile(wheel).namelist())


def test_every_module_is_in_what_users_install(tmp_path):
    """A module or package left out of pyproject.toml would pass every test run from the checkout and be missing
    for every user."""
    files = installed_files()
    if files is None:
        files = built_wheel_files(tmp_path)
    tree = {p.relative_to(ROOT).as_posix() for p in PACKAGE.rglob("*.py")}
    assert sorted(tree - files) == []
