# Type stub of the SWIG-generated core module (psrpc.i): private, untyped.
from typing import Any

def __getattr__(name: str) -> Any: ...
