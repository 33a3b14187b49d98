"""The wheel holds everything the CLI runs: every package, the default configs, the bench.

``gimefive`` installed from a wheel (not editable) has no checkout beside it, so what
``export``, ``train`` and ``bench`` read must be inside the package. The wheel is built
from a clean copy of the tree (scripts/build_wheel.sh); scripts/wheel_smoke.sh (run by
.ci/run) then installs it and runs the commands.
"""

from __future__ import annotations

import configparser
import subprocess
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow  # builds a wheel: about 15 s


@pytest.fixture(scope="module")
def members(tmp_path_factory) -> set[str]:
    dist = tmp_path_factory.mktemp("dist")
    proc = subprocess.run(["bash", str(REPO / "scripts" / "build_wheel.sh"), str(dist)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = dist.glob("gimefive-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        return set(zf.namelist())


def package_dirs() -> dict[str, Path]:
    """setup.cfg's package_dir: import name -> source folder."""
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    lines = [line.split("=") for line in cfg["options"]["package_dir"].splitlines() if line]
    return {name.strip(): REPO / folder.strip() for name, folder in lines}


def test_every_package_folder_is_in_the_wheel(members):
    """A folder with an __init__.py under a mapped source folder must ship (a forgotten
    subpackage, such as the classifier backends, breaks `annotate` only when installed)."""
    missing = []
    for name, folder in package_dirs().items():
        for init in folder.rglob("__init__.py"):
            rel = init.relative_to(folder).parent
            member = "/".join([*name.split("."), *rel.parts, "__init__.py"])
            if member not in members:
                missing.append(member)
    assert not missing, f"packages missing from the wheel: {missing}"


def test_default_configs_are_in_the_wheel(members):
    shipped = sorted(p.name for p in (REPO / "configs").glob("*.yaml"))
    assert shipped and "annotate.yaml" in shipped
    assert {f"gimefive/configs/{n}" for n in shipped} <= members


def test_bench_is_in_the_wheel(members):
    for name in ("__init__.py", "system_bench.py", "report.py", "backends_bench.py",
                 "paper_baseline.py", "setup_baseline_venv.sh", "scenes.py", "machine.py"):
        assert f"gimefive/pipeline/bench/{name}" in members


def test_test_only_code_is_not_in_the_wheel(members):
    """The stand-in model is for tests; the scenes ship only because the bench uses them."""
    assert not {"gimefive/export/testing.py", "gimefive/synthetic.py"} & members
    assert not any(m.startswith(("tests/", "benchmarks/")) or "stand_in" in m for m in members)


def test_shipped_weights_are_in_the_wheel(members):
    assert "gimefive/weights/gimefive.safetensors" in members
