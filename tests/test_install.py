"""`pip install .` installs the engine, pruning, the stages and flows, and the files they load by path; the
test-only requirements stay out of the runtime ones."""
from __future__ import annotations

import re
import subprocess
import sys
import zipfile

from conftest import REPO


def test_the_wheel_holds_every_module_and_the_files_loaded_by_path(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(REPO)], check=True, capture_output=True, timeout=300)
    [wheel] = tmp_path.glob("twofour-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for package in ("engine", "pruning", "stages", "flows"):
        modules = {f"{package}/{path.name}" for path in (REPO / package).glob("*.py")}
        assert modules <= names, modules - names
    # stages/evaluate.py loads the metric from beside its package; the engine compiles its C sources, each
    # named by the module that builds it as Path(__file__).with_name(...)
    beside = {f"{package}/{name}" for package in ("engine", "pruning", "stages", "flows")
              for path in (REPO / package).glob("*.py")
              for name in re.findall(r'Path\(__file__\)\.with_name\("([^"]+)"\)', path.read_text())}
    assert {"engine/cslt_plans.c", "engine/cublaslt_fp8.c"} <= beside
    assert beside | {"metrics_lib/squad_v1/squad_v1.py", "engine/qa.py"} <= names, beside - names
    assert not any(name.startswith(("tests/", "data/", "benchmarks/")) for name in names)
    requires = next(zipfile.ZipFile(wheel).read(n).decode() for n in names if n.endswith("METADATA"))
    runtime = [line for line in requires.splitlines() if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert any("torch==2.13.0" in line for line in runtime)
    assert not any(name in line for line in runtime for name in ("pytest", "hypothesis", "triton"))
    assert any("pytest" in line and 'extra == "test"' in line for line in requires.splitlines())
