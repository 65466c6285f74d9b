"""The optional C++ extension: oneDNN's convolutions and batch normalisation as XLA FFI targets
(fluxdigits/cpu/onednn_kernels.cc).

Built by `pip install` against the build requirements' jaxlib (XLA's FFI headers) and oneDNN (onednn-devel-cpu-gomp).
Optional: where it cannot be built (no C++ compiler, another OS or CPU) the install goes on without it, and the
layers use their XLA formulations (fluxdigits/cpu/onednn.py says which).
"""

import pathlib
import platform

from setuptools import Extension, setup


def onednn_dirs() -> tuple[str, str]:
  """(include dir, lib dir) of the oneDNN wheels in the build environment."""
  from importlib import metadata

  headers = metadata.distribution("onednn-devel-cpu-gomp")
  header = next(f for f in headers.files if f.name == "dnnl.hpp" and f.parent.name == "dnnl")
  library = metadata.distribution("onednn-cpu-gomp")
  shared = next(f for f in library.files if f.name == "libdnnl.so")
  return (
    str(pathlib.Path(headers.locate_file(header)).resolve().parents[2]),
    str(pathlib.Path(library.locate_file(shared)).resolve().parent),
  )


def extensions() -> list:
  if platform.system() != "Linux" or platform.machine() != "x86_64":
    return []  # oneDNN's wheel is for x86-64 Linux
  try:
    import jaxlib

    include, lib = onednn_dirs()
  except Exception:  # the build requirements are missing (a build without isolation): install without it
    return []
  return [
    Extension(
      "fluxdigits.cpu._onednn_kernels",
      ["fluxdigits/cpu/onednn_kernels.cc"],
      language="c++",
      optional=True,
      include_dirs=[str(pathlib.Path(jaxlib.__file__).parent / "include"), include],
      library_dirs=[lib],
      libraries=["dnnl"],
      extra_compile_args=["-std=c++17", "-O2", "-w"],
    )
  ]


setup(ext_modules=extensions())
