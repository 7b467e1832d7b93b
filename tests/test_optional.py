"""Packaging: every package lowbit imports is declared; a package of an extra (or a lost core dependency) that is
missing is one line naming the ``pip install`` that brings it; ``import lowbit`` and the commands that do not need
ONNX work without the ``export`` extra."""

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from lowbit import LowbitError
from lowbit.cli import main
from lowbit.errors import MissingDependency
from lowbit.optional import CORE, EXTRAS, install_hint, require

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "src" / "lowbit"
EXPORT_EXTRA = 'pip install "lowbit[export]"'

#: import name -> distribution, for the core dependencies that lowbit imports at the top of its modules
TOP_LEVEL_CORE = {
    "torch": "torch",
    "numpy": "numpy",
    "yaml": "pyyaml",
    "jsonschema": "jsonschema",
    "tqdm": "tqdm",
    "matplotlib": "matplotlib",
    "safetensors": "safetensors",
}


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _names(requirements: list[str]) -> set[str]:
    """Distribution names of PEP 508 requirement strings, lower case (``"onnx>=1.15"`` -> ``"onnx"``)."""
    import re

    return {re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower() for requirement in requirements}


def _without(monkeypatch, *modules):
    """Make ``import module`` (and of its submodules, imported or not) fail as if it were not installed: ``None`` in
    ``sys.modules`` stops an import."""
    for module in modules:
        for name in [name for name in sys.modules if name.startswith(f"{module}.")]:
            monkeypatch.setitem(sys.modules, name, None)
        monkeypatch.setitem(sys.modules, module, None)


# ---------------------------------------------------------------------------------------------- the message
def test_a_missing_extra_is_one_line_naming_the_package_and_the_extra(monkeypatch):
    _without(monkeypatch, "onnx")
    with pytest.raises(MissingDependency) as caught:
        require("onnx", "ONNX export")
    error = caught.value
    assert isinstance(error, LowbitError) and isinstance(error, ImportError)  # one line in the CLI; still ImportError
    assert str(error) == f"ONNX export needs the onnx package, which is not installed: {EXPORT_EXTRA}"
    assert error.name == "onnx" and isinstance(error.__cause__, ModuleNotFoundError)


def test_a_missing_core_dependency_names_its_distribution(monkeypatch):
    _without(monkeypatch, "scipy.io")
    with pytest.raises(MissingDependency, match=r"needs the scipy package, which is not installed: pip install scipy$"):
        require("scipy.io", "reading SVHN")
    _without(monkeypatch, "sklearn")
    with pytest.raises(MissingDependency, match="pip install scikit-learn$"):
        require("sklearn.datasets", "the digits dataset")


def test_an_installed_package_that_fails_to_import_says_so(monkeypatch, tmp_path):
    """onnx present but its own dependency gone: not 'not installed', and the underlying error is in the line."""
    (tmp_path / "fakeextra").mkdir()
    (tmp_path / "fakeextra" / "__init__.py").write_text("import no_such_dependency_of_fakeextra\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(EXTRAS, "fakeextra", ("fake-extra", "export"))
    with pytest.raises(MissingDependency) as caught:
        require("fakeextra", "testing")
    message = str(caught.value)
    assert "\n" not in message and "installed but fails to import" in message
    assert "no_such_dependency_of_fakeextra" in message and "pip install --force-reinstall fake-extra" in message


def test_a_package_that_is_not_declared_is_a_bug_not_a_user_error():
    with pytest.raises(KeyError, match="declare it in pyproject.toml"):
        require("not_a_declared_package", "testing")


# ------------------------------------------------------------------------------------------ the import sites
def test_library_entry_points_of_onnx_export_name_the_extra(monkeypatch, tmp_path):
    from lowbit.export import export_onnx, onnx_parity, runtime_kernels
    from lowbit.export.verify import ort_session

    _without(monkeypatch, "onnx", "onnxruntime")
    model = torch.nn.Linear(4, 2)
    with pytest.raises(MissingDependency, match=r"needs the onnx package.*lowbit\[export\]"):
        export_onnx(model, tmp_path / "m.onnx", input_shape=(4,))
    with pytest.raises(MissingDependency, match=r"needs the onnxruntime package.*lowbit\[export\]"):
        ort_session(tmp_path / "m.onnx")
    with pytest.raises(MissingDependency, match=r"needs the onnxruntime package"):
        onnx_parity(model, tmp_path / "m.onnx", torch.zeros(1, 4))
    with pytest.raises(MissingDependency, match=r"needs the (onnx|onnxruntime) package"):
        runtime_kernels(tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_datasets_name_their_dependency(monkeypatch, tmp_path):
    from lowbit.data import load_dataset
    from lowbit.data.svhn import read_svhn_mat

    _without(monkeypatch, "sklearn", "scipy")
    with pytest.raises(MissingDependency, match="digits.*pip install scikit-learn"):
        load_dataset("digits")
    with pytest.raises(MissingDependency, match="SVHN.*pip install scipy"):
        read_svhn_mat(tmp_path / "train_32x32.mat")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from lowbit.train import TrainConfig, run

    out = tmp_path_factory.mktemp("tiny") / "run"
    config = TrainConfig(
        recipe="bc-det", data="digits", epochs=1, pretrain_epochs=0, train_subset=64, test_subset=32, quiet=True
    )
    config.out = str(out)
    run(config)
    return out


def test_cli_onnx_export_without_the_extra_is_one_line_and_writes_nothing(monkeypatch, capsys, tiny_run):
    _without(monkeypatch, "onnx", "onnxruntime")
    for extra_args in ([], ["--verify"]):
        assert main(["export", str(tiny_run), "--format", "onnx", *extra_args]) == 2
        captured = capsys.readouterr()
        lines = captured.err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("lowbit: error: lowbit export --format onnx")
        assert lines[0].endswith(f"needs the onnx package, which is not installed: {EXPORT_EXTRA}")
        assert not (tiny_run / "model.onnx").exists()


def test_cli_verify_without_onnxruntime_stops_before_writing(monkeypatch, capsys, tiny_run):
    _without(monkeypatch, "onnxruntime")
    pytest.importorskip("onnx")
    assert main(["export", str(tiny_run), "--format", "onnx", "--verify", "--out", str(tiny_run / "v.onnx")]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and f"needs the onnxruntime package, which is not installed: {EXPORT_EXTRA}" in lines[0]
    assert not (tiny_run / "v.onnx").exists()


def test_cli_packed_export_works_without_the_extra(monkeypatch, capsys, tiny_run):
    _without(monkeypatch, "onnx", "onnxruntime")
    out = tiny_run / "without-extra.packed.safetensors"
    assert main(["export", str(tiny_run), "--out", str(out), "--verify"]) == 0
    assert "identical on 32/32" in capsys.readouterr().out and out.stat().st_size > 0


def test_every_module_but_the_onnx_graph_rewriter_imports_without_the_extra():
    """In a fresh interpreter with onnx and onnxruntime blocked: ``import lowbit``, the CLI and every module import;
    the one module that needs onnx at import time fails with the one-line error."""
    script = textwrap.dedent(
        """
        import importlib, pkgutil, sys
        sys.modules["onnx"] = sys.modules["onnxruntime"] = None
        import lowbit, lowbit.cli
        from lowbit.errors import MissingDependency
        failed = {}
        for module in pkgutil.walk_packages(lowbit.__path__, "lowbit."):
            if module.name.endswith("__main__"):  # runs the command line when imported
                continue
            try:
                importlib.import_module(module.name)
            except MissingDependency as error:
                failed[module.name] = str(error)
        print(repr(failed))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    failed = ast.literal_eval(result.stdout.strip().splitlines()[-1])
    assert list(failed) == ["lowbit.export.onnx_graph"]
    assert failed["lowbit.export.onnx_graph"].endswith(EXPORT_EXTRA)


# ------------------------------------------------------------------------------------- declared dependencies
def _third_party_imports() -> dict[str, set[str]]:
    """Top-level third-party names imported by lowbit's modules (outside ``if TYPE_CHECKING:``) -> files."""
    found: dict[str, set[str]] = {}
    for path in SOURCE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        skipped = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                skipped.update(id(child) for stmt in node.body for child in ast.walk(stmt))
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("require", "missing"):
                names = [node.args[0].value] if node.args and isinstance(node.args[0], ast.Constant) else []
            else:
                continue
            for name in names:
                top = name.partition(".")[0]
                if top != "lowbit" and top not in sys.stdlib_module_names and top != "__future__":
                    found.setdefault(top, set()).add(str(path.relative_to(SOURCE)))
    return found


def test_every_imported_package_is_declared_in_pyproject():
    project = _pyproject()["project"]
    core = _names(project["dependencies"])
    extras = {extra: _names(requirements) for extra, requirements in project["optional-dependencies"].items()}
    imported = _third_party_imports()
    for top, files in imported.items():
        if top in EXTRAS:
            distribution, extra = EXTRAS[top]
            assert distribution in extras[extra], f"{top} (imported in {files}) is not in the {extra} extra"
        else:
            distribution = TOP_LEVEL_CORE.get(top) or CORE.get(top)
            assert distribution, f"{top}, imported in {sorted(files)}, is not a declared dependency"
            assert distribution in core, f"{distribution} (imported in {sorted(files)}) is not in dependencies"
    # and the reverse: nothing in the export extra that lowbit never imports (onnxscript was)
    assert extras["export"] == {EXTRAS[top][0] for top in EXTRAS if EXTRAS[top][1] == "export"}
    assert {"onnx", "onnxruntime", "scipy", "sklearn"} <= set(imported)


def test_the_extras_packages_are_imported_only_through_lowbit_optional():
    """A plain ``import onnx`` would be a traceback without the extra: only inside ``try`` (onnx_graph, which turns
    it into the one-line error) or under ``TYPE_CHECKING``."""
    for path in SOURCE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        allowed = set()
        for node in ast.walk(tree):
            if (isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)) or isinstance(node, ast.Try):
                allowed.update(id(child) for stmt in node.body for child in ast.walk(stmt))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                if name.partition(".")[0] in EXTRAS:
                    assert id(node) in allowed, f"{path.relative_to(SOURCE)}:{node.lineno}: import {name}: use require"


def test_install_hint():
    assert install_hint("onnxruntime") == EXPORT_EXTRA
    assert install_hint("scipy.io") == "pip install scipy"
