"""Compiling .proto files at run time (for scripts and tests): needs
grpcio-tools (``pip install grpcio-tools``) or a ``protoc`` on PATH."""

from __future__ import annotations

import atexit
import importlib
import os
import shutil
import subprocess
import sys
import tempfile
from types import ModuleType
from typing import List, Optional, Sequence

from ._options import proto_include

__all__ = ["compile_protos", "load_proto"]

_cache_dir: Optional[str] = None


def _run_protoc(args: List[str]) -> None:
    try:
        import grpc_tools  # type: ignore
        from grpc_tools import protoc  # type: ignore[import-untyped,unused-ignore]

        well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
        rc = protoc.main(["protoc", f"-I{well_known}"] + args)
    except ImportError:
        exe = shutil.which("protoc")
        if exe is None:
            raise RuntimeError("compiling .proto files needs grpcio-tools "
                               "(pip install grpcio-tools) or protoc on PATH") from None
        rc = subprocess.call([exe] + args)
    if rc != 0:
        raise RuntimeError(f"protoc failed (exit {rc}) for {args}")


def compile_protos(files: Sequence[str], out_dir: str, include: Sequence[str] = (), *,
                   pyi: bool = False, typed: bool = False) -> List[str]:
    """Generates ``*_pb2.py`` for files into out_dir (with ``pyi`` their
    ``.pyi``, with ``typed`` the typed ``_psrpc.py`` modules: see
    ``psrpc.codegen``). The files' directories and ``include`` are searched
    for imports, then the package's own ``options.proto``; a file importing
    ``options.proto`` gets ``psrpc.options_pb2`` as its module, so
    options.proto itself is not compiled. Returns the paths written."""
    from .codegen import generate

    return generate(files, out_dir, include, pyi=pyi, typed=typed)


def load_proto(path: str, include: Sequence[str] = ()) -> ModuleType:
    """Compiles a .proto file and imports its ``_pb2`` module:
    ``pb = psrpc.load_proto("add_value.proto")``."""
    global _cache_dir
    if _cache_dir is None:
        _cache_dir = tempfile.mkdtemp(prefix="psrpc-proto-")
        sys.path.insert(0, _cache_dir)
        atexit.register(shutil.rmtree, _cache_dir, True)
    compile_protos([path], _cache_dir, include)
    name = os.path.splitext(os.path.basename(path))[0] + "_pb2"
    importlib.invalidate_caches()
    return importlib.import_module(name)
