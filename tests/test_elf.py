"""bnn_tvm.elf reads what binutils reads: a TVM-built aarch64 model's code symbols as ``nm`` lists them (the ARM
profiler's kernel names), a library's NEEDED entries and needed glibc versions as ``readelf`` prints them (the
bundle's checks), and names what is wrong with a damaged file."""

import re
import shutil
import subprocess

import pytest

import bnn_tvm
from bnn_tvm import elf, zoo
from bnn_tvm.bundle import bundle_target, runner_executable

CASE = zoo.ConvCase("packed-handoff", output="packed", channels_in=64, channels_out=33, strides=2)


@pytest.fixture(scope="module")
def rpi4_so(tmp_path_factory):
    so = tmp_path_factory.mktemp("elf") / "conv-rpi4.so"
    bnn_tvm.compile(zoo.cached_tflite(CASE), target="rpi4").export_library(so)
    return so


def test_code_symbols_are_nms(rpi4_so):
    nm = shutil.which("aarch64-linux-gnu-nm")
    if nm is None:
        pytest.skip("aarch64-linux-gnu-nm (binutils-aarch64-linux-gnu) is not installed")
    listed = subprocess.run([nm, "--defined-only", str(rpi4_so)], capture_output=True, text=True, check=True).stdout
    expected = sorted((int(f[0], 16), f[2]) for f in map(str.split, listed.splitlines())
                      if len(f) == 3 and f[1] in "tTwW")
    library = elf.ElfFile.read(rpi4_so)
    assert library.machine == 183 and elf.machine(rpi4_so) == 183
    symbols = sorted((symbol.value, symbol.name) for symbol in library.code_symbols())
    assert symbols == expected
    assert any(name.startswith("__tvm_ffi_") for _, name in symbols)


def test_needed_and_version_needs_are_readelfs(rpi4_so):
    """On the bundle's host runner (which needs TVM's runtime and glibc) and the aarch64 model (which needs
    nothing: TVM's symbols come from the process that loads it); against readelf's version-needs entries."""
    runner = runner_executable(bundle_target("host"))
    for binary in (runner, rpi4_so):
        dynamic = subprocess.run(["readelf", "-d", str(binary)], capture_output=True, text=True, check=True).stdout
        needed = [line.split("[", 1)[1].split("]", 1)[0] for line in dynamic.splitlines() if "(NEEDED)" in line]
        versions = subprocess.run(["readelf", "-V", "--wide", str(binary)], capture_output=True, text=True,
                                  check=True).stdout
        library = elf.ElfFile.read(binary)
        assert library.needed() == needed
        assert library.version_needs() == re.findall(r"0x[0-9a-f]+:\s+Name: (\S+)\s+Flags", versions)
    assert "libtvm_runtime.so" in elf.ElfFile.read(runner).needed()
    assert any(version.startswith("GLIBC_") for version in elf.ElfFile.read(runner).version_needs())


def test_damage_is_named(rpi4_so):
    data = rpi4_so.read_bytes()
    with pytest.raises(elf.ElfError, match=r"^no ELF header"):
        elf.ElfFile(b"PK\x03\x04" + data[4:])
    with pytest.raises(elf.ElfError, match=r"^its ELF header is incomplete"):
        elf.ElfFile(data[:40])
    with pytest.raises(elf.ElfError, match=r"ends past the end of the file"):
        elf.ElfFile(data[: len(data) // 2]).sections()
