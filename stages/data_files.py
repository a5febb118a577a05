"""The data files params.yaml names, checked to lie inside data.dir: for validate and tokenize."""
from __future__ import annotations

from pathlib import Path

from .params import ParamError, Params


def data_files(params: Params, field: str, root: Path = Path("."), source: str = "params.yaml") -> list[Path]:
    """The files a data.*_files param names, inside data.dir: that folder is tokenize's DVC
    dependency, so a file elsewhere could change without DVC seeing it."""
    paths = []
    for name in params[field]:
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise ParamError(f"{source}: {field} entry {name!r} must be a file name inside data.dir "
                             f"({params['data.dir']}), the folder DVC watches")
        paths.append(root / params["data.dir"] / name)
    return paths
