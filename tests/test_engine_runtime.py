"""engine/runtime.py on a CPU: TWOFOUR_CUSPARSELT names a library that the engine's entry points load
before torch and whose version is read from the library itself. A stand-in libcusparseLt.so.0 (built here with the C compiler,
answering cusparseLtGetProperty as 0.10.0 does) plays the real one, in child processes so this one
never holds it."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine.config import CUSPARSELT_ENV
from engine.runtime import (
    CusparseLtError,
    load_cusparselt,
    loaded_version,
    mapped_cusparselt,
)

REPO = Path(__file__).resolve().parent.parent
STAND_IN = """
int cusparseLtGetProperty(int type, int *value) {
    static const int version[3] = {%d, %d, %d};
    if (type < 0 || type > 2) return 3;
    *value = version[type];
    return 0;
}
"""


def stand_in(directory: Path, version: tuple[int, int, int]) -> Path:
    if shutil.which("cc") is None:
        pytest.skip("no C compiler to build a stand-in cuSPARSELt")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "lib.c").write_text(STAND_IN % version)
    library = directory / "libcusparseLt.so.0"
    subprocess.run(["cc", "-shared", "-fPIC", "-Wl,-soname,libcusparseLt.so.0", "-o", str(library),
                    str(directory / "lib.c")], check=True)
    return library


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)


def test_without_the_setting_nothing_is_loaded(monkeypatch):
    monkeypatch.delenv(CUSPARSELT_ENV, raising=False)
    assert load_cusparselt() is None
    assert loaded_version() is None  # a CPU build of torch loads no cuSPARSELt


def test_a_missing_file_fails_with_one_line_naming_the_setting(tmp_path):
    missing = tmp_path / "nowhere" / "libcusparseLt.so.0"
    with pytest.raises(CusparseLtError) as failure:
        load_cusparselt(str(missing))
    message = str(failure.value)
    assert message.startswith(f"{CUSPARSELT_ENV}={missing}: no such file") and "\n" not in message


def test_an_entry_point_loads_the_named_library_before_torch_and_reports_its_version(tmp_path):
    library = stand_in(tmp_path / "v10", (0, 10, 0))
    result = run_python("import engine.qa, json, torch  # python -m engine.qa starts as engine.qa's import\n"
                        "from engine.runtime import cusparselt_facts, load_cusparselt, mapped_cusparselt\n"
                        "load_cusparselt()  # again, as every other entry point in the process does\n"
                        "print(json.dumps([cusparselt_facts(), mapped_cusparselt()]))",
                        **{CUSPARSELT_ENV: str(library)})
    assert result.returncode == 0, result.stderr
    facts, mapped = json.loads(result.stdout)
    assert facts["cusparselt"] == "0.10.0" and facts["cusparselt_torch_compiled"] is None  # a CPU build
    assert facts["cusparselt_files"] == mapped == [str(library.resolve())]  # loaded once, however often asked


def test_a_library_loaded_first_by_someone_else_is_an_error_naming_both(tmp_path):
    """What happens when torch (played by a ctypes load of another file) was imported before engine."""
    first, named = stand_in(tmp_path / "v8", (0, 8, 0)), stand_in(tmp_path / "v10", (0, 10, 0))
    load_first = f"import ctypes; ctypes.CDLL({str(first)!r}, mode=ctypes.RTLD_GLOBAL)\n"
    result = run_python(load_first + "import engine.qa", **{CUSPARSELT_ENV: str(named)})
    last_line = result.stderr.strip().splitlines()[-1]
    assert result.returncode != 0
    assert f"{CUSPARSELT_ENV}={named}: this process already runs cuSPARSELt from {first.resolve()}" in last_line
    # Without the setting, the version is the one loaded, whatever its file (0.8 keeps working).
    result = run_python(load_first + "from engine.runtime import loaded_version; print(loaded_version())",
                        **{CUSPARSELT_ENV: ""})
    assert result.stdout.strip() == "0.8.0", result.stderr


def test_gpu_device_facts_name_the_cusparselt_loaded_not_the_one_torch_was_compiled_against(monkeypatch):
    from stages.common import device_facts

    cpu = device_facts(torch.device("cpu"))
    assert not any(key.startswith("cusparselt") for key in cpu)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "a GPU standing in")
    gpu = device_facts(torch.device("cuda"))
    # What this CPU process loaded: no cuSPARSELt, whatever torch was compiled against.
    assert gpu["cusparselt"] is None and gpu["cusparselt_files"] == []
    assert "cusparselt_torch_compiled" in gpu


def test_mapped_libraries_are_read_from_the_process_map(tmp_path):
    maps = tmp_path / "maps"
    maps.write_text("7f00-7f01 r--p 00000000 08:01 1 /opt/nvidia/cu13/lib/libcusparseLt.so.0\n"
                    "7f01-7f02 r-xp 00001000 08:01 1 /opt/nvidia/cu13/lib/libcusparseLt.so.0\n"
                    "7f02-7f03 rw-p 00000000 00:00 0 \n"
                    "7f03-7f04 r--p 00000000 08:01 2 /usr/lib/libc.so.6\n")
    assert mapped_cusparselt(maps) == ["/opt/nvidia/cu13/lib/libcusparseLt.so.0"]
    assert mapped_cusparselt(tmp_path / "absent") == []
