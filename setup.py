"""Build fastdarts: one extension, `fastdarts._C`.

Always a C++ extension with the CPU kernels; the CUDA sources are added (and it becomes a
CUDA extension) when the installed torch has CUDA and nvcc is found, or when
FASTDARTS_FORCE_CUDA=1 (wheels built on machines without a GPU). FASTDARTS_SKIP_CUDA=1 opts
out. Environment: FASTDARTS_CUDA_ARCHS ("80;90", PTX for the newest is added),
FASTDARTS_DEBUG=1 (no -DNDEBUG, -O0 -g), MAX_JOBS, NVCC_THREADS. No network or git
commands: the commit is read from .git files if present.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "0").strip().lower() in ("1", "true", "yes", "on")


def _git_commit() -> str | None:
    """HEAD's commit from the .git folder (or FASTDARTS_COMMIT), without running git."""
    if os.environ.get("FASTDARTS_COMMIT"):
        return os.environ["FASTDARTS_COMMIT"]
    git = ROOT / ".git"
    try:
        if git.is_file():  # a worktree: "gitdir: <path>"
            git = Path(git.read_text().split(":", 1)[1].strip())
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return head
        ref = head.split(" ", 1)[1]
        for base in (git, Path(git / "commondir").read_text().strip()
                     if (git / "commondir").is_file() else git):
            ref_file = (git / base / ref) if not Path(base).is_absolute() else Path(base) / ref
            if ref_file.is_file():
                return ref_file.read_text().strip()
        packed = git / "packed-refs"
        if packed.is_file():
            for line in packed.read_text().splitlines():
                if line.endswith(" " + ref):
                    return line.split(" ", 1)[0]
    except OSError:
        pass
    return None


def _default_max_jobs() -> None:
    """Cap parallel compile jobs by cores and memory (about 2 GiB per nvcc job)."""
    if "MAX_JOBS" in os.environ:
        return
    cores = os.cpu_count() or 1
    try:
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        mem_gib = 8
    os.environ["MAX_JOBS"] = str(max(1, min(cores, int(mem_gib // 2))))


def _extension():
    import torch
    from torch.utils import cpp_extension

    force, skip = _env_flag("FASTDARTS_FORCE_CUDA"), _env_flag("FASTDARTS_SKIP_CUDA")
    with_cuda = not skip and (force or (torch.version.cuda is not None
                                        and cpp_extension.CUDA_HOME is not None))
    debug = _env_flag("FASTDARTS_DEBUG")
    archs = [a.strip() for a in os.environ.get("FASTDARTS_CUDA_ARCHS", "80;90").split(";")
             if a.strip()]
    cxx = ["-O0", "-g"] if debug else ["-O3", "-DNDEBUG"]
    cxx += ["-std=c++17", "-fopenmp"]
    sources = ["csrc/bindings.cpp", "csrc/weighted_sum_cpu.cpp", "csrc/mixed_op_cpu.cpp",
               "csrc/partial_channel_cpu.cpp", "csrc/hvp_cpu.cpp",
               "csrc/depthwise_conv_cpu.cpp"]
    kwargs = dict(extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"])
    if with_cuda:
        nvcc = ["-O0", "-g", "-G"] if debug else ["-O3", "-DNDEBUG"]
        nvcc += ["-std=c++17", "--use_fast_math"] if not debug else ["-std=c++17"]
        for arch in archs:
            nvcc += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
        newest = max(archs, key=int)
        nvcc += ["-gencode", f"arch=compute_{newest},code=compute_{newest}"]
        nvcc += ["--threads", os.environ.get("NVCC_THREADS", "4")]
        kwargs["extra_compile_args"]["nvcc"] = nvcc
        kwargs["define_macros"] = [("FASTDARTS_WITH_CUDA", None)]
        sources += ["csrc/weighted_sum.cu", "csrc/mixed_op.cu", "csrc/partial_channel.cu",
                    "csrc/hvp.cu"]
        ext = cpp_extension.CUDAExtension("fastdarts._C", sources, **kwargs)
    else:
        ext = cpp_extension.CppExtension("fastdarts._C", sources, **kwargs)

    info = {
        "version": VERSION, "torch": torch.__version__, "torch_cuda": torch.version.cuda,
        "with_cuda": with_cuda, "cuda_archs": archs if with_cuda else [],
        "cuda_home": cpp_extension.CUDA_HOME if with_cuda else None, "debug": debug,
        "cxx_flags": cxx, "nvcc_flags": kwargs["extra_compile_args"].get("nvcc", []),
        "git_commit": _git_commit(),
    }
    (ROOT / "fastdarts" / "_build_info.json").write_text(json.dumps(info, indent=2) + "\n")
    return ext, _reusing_build_dir(cpp_extension.BuildExtension)


def _reusing_build_dir(build_ext_cls):
    """build_ext with its object files in ROOT/build (FASTDARTS_BUILD_DIR), not in the temporary
    folder an editable or in-tree pip install gives it. Ninja then recompiles only what changed
    (it tracks sources, included headers and each command line), so re-running the README's
    install after no change relinks in seconds instead of compiling everything again."""

    class ReusingBuildExt(build_ext_cls):
        def finalize_options(self):
            super().finalize_options()
            base = Path(os.environ.get("FASTDARTS_BUILD_DIR", ROOT / "build"))
            self.build_temp = str(base / "objects")

    return ReusingBuildExt


VERSION = "0.1.0"
_default_max_jobs()
extension, build_ext = _extension()

setup(
    name="fastdarts",
    version=VERSION,
    description="Fast, memory-lean differentiable architecture search with fused kernels",
    long_description=(ROOT / "README.md").read_text() if (ROOT / "README.md").is_file() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["fastdarts", "fastdarts.*"]) + ["fastdarts.kernels"],
    package_dir={"fastdarts.kernels": "kernels"},
    package_data={"fastdarts": ["_build_info.json"]},
    ext_modules=[extension],
    cmdclass={"build_ext": build_ext.with_options(no_python_abi_suffix=False)},
    install_requires=["torch", "numpy", "scipy", "scikit-learn", "matplotlib", "pillow", "tqdm",
                      "packaging"],
    extras_require={"triton": ["triton"], "gpu": ["triton", "nvidia-ml-py"],
                    "test": ["pytest", "pytest-benchmark"]},
    entry_points={"console_scripts": ["fastdarts=fastdarts.cli:main"]},
    zip_safe=False,
)
