"""Compiling the engine's small C libraries (cslt_plans.c for the plan cache, cublaslt_fp8.c for the fp8
epilogue) against the CUDA library the process loaded, once: the built file is reused while the source,
the library and the headers stay the same, and the compiler's command and whole output are kept in a log
beside it."""
from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Callable

import torch

from .errors import first_line


def compile_error(stderr: str) -> str:
    """The compiler's first error line (gcc/clang: "file:line:col: [fatal ]error: ..."), else its first
    line that is not source or a caret; the whole output goes to the log."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()] or ["no message"]
    for pattern in (r"\berror:", r"\berror\b"):
        found = next((line for line in lines if re.search(pattern, line, re.IGNORECASE)), None)
        if found:
            return found
    return next((line for line in lines if not line.startswith("|") and not line[0].isdigit()), lines[0])


def cache_folder() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "twofour"


def compile_library(source: Path, includes: list[Path], library: str, fingerprint: list[str],
                    error: type[Exception], cache_dir: Path | None = None, cplusplus: bool = False) -> Path:
    """`source` built as a shared library linked to `library` (in the cache folder, named by a key of the
    source, the library, the include folders and `fingerprint`); `error` says in one line what failed.
    With `cplusplus` it is compiled as C++ ($CXX, c++ or g++; else $CC, cc or gcc): headers that only
    C++ reads (CUDA's cuda_fp16.h, which cublasLt.h includes)."""
    key_text = "\n".join([source.read_text(), library, *map(str, includes), *fingerprint])
    key = hashlib.sha256(key_text.encode()).hexdigest()[:16]
    cache_dir = cache_dir or cache_folder()
    built = cache_dir / f"{source.stem}-{key}.so"
    if built.is_file():
        return built
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = built.with_suffix(f".{os.getpid()}.tmp")
    if cplusplus:
        compiler, language = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++"), ["-x", "c++"]
    else:
        compiler, language = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc"), []
    if compiler is None:
        raise error(f"no {'C++' if cplusplus else 'C'} compiler ({'c++, g++ or $CXX' if cplusplus else 'cc, gcc or $CC'})")
    # -Wno-deprecated-declarations: the toolkit's cusparse.h warns about its own old types, hundreds of lines.
    command = [compiler, "-O2", "-shared", "-fPIC", "-Wno-deprecated-declarations", "-o", str(partial),
               *(f"-I{folder}" for folder in includes), *language, str(source), *(["-x", "none"] if language else []),
               library]
    log = built.with_suffix(".log")
    try:
        result = subprocess.run(command, capture_output=True, text=True, errors="replace", timeout=120)
    except (OSError, subprocess.SubprocessError) as err:
        raise error(f"building {source.name}: {err}") from None
    log.write_text(" ".join(command) + f"\nexit status {result.returncode}\n{result.stdout}{result.stderr}")
    if result.returncode:
        partial.unlink(missing_ok=True)
        raise error(f"building {source.name} failed: {compile_error(result.stderr)} (whole output: {log})")
    partial.rename(built)
    return built


def load(built: Path, cuda_library: str, status_text_symbol: str) -> tuple[ctypes.CDLL, Callable[[int], str]]:
    """The built library, and the text the CUDA library it calls gives each of its status codes."""
    library = ctypes.CDLL(str(built))
    status_text = getattr(ctypes.CDLL(cuda_library), status_text_symbol)
    status_text.restype = ctypes.c_char_p
    return library, lambda status: (status_text(status) or b"?").decode()


def enable_once(state: dict, attempt: Callable[[], str]) -> str | None:
    """attempt() (why the library is unusable, "" once it is on) once per process, kept in `state`; None
    when usable, else the reason (one line)."""
    if "reason" not in state:
        state["reason"] = attempt()
    return state["reason"] or None


def attempt(state: dict, key: str, make: Callable[[], object], mismatch: Callable[[object], str | None]) -> str:
    """Why a library is unusable here, "" once it is on and state[key] holds it: make() builds and loads
    it, mismatch(library) checks it on this GPU."""
    if not torch.cuda.is_available():
        return "no CUDA device"
    try:
        library = make()
        wrong = mismatch(library)
    except (OSError, RuntimeError, AttributeError) as err:  # the build's errors are RuntimeErrors
        return first_line(err)
    if wrong:
        return wrong
    state[key] = library
    return ""
