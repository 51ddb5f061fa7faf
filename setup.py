"""Build hook: compiles the featurizer's Cython kernels when the package installs (metadata is in pyproject.toml)."""

from __future__ import annotations

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

KERNELS = Extension(
    "featurizer._kernels",
    ["featurizer/_kernels.pyx"],
    include_dirs=[numpy.get_include()],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    extra_compile_args=["-O3", "-fopenmp"],  # the batch kernel uses every core
    extra_link_args=["-fopenmp"],
)

setup(ext_modules=cythonize([KERNELS], compiler_directives={"language_level": "3"}))
