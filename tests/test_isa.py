"""The vector instruction set: choosing the level, refusing a bad CHARRNN_ISA,
compiling only what the level allows, --version, the portable spin-wait hint, and
the engine's tests under every other level the machine supports (in subprocesses:
the level is fixed when the engine is first imported)."""

import os
import platform
import re
import subprocess
import sys

import pytest
from conftest import ROOT

from charrnn import isa
from charrnn.errors import CharrnnError

AVX512_HOST = {"avx512f": True, "avx512vl": True, "avx2": True, "fma": True, "avx": True, "sse2": True}
AVX2_HOST = {"avx512f": False, "avx2": True, "fma": True, "avx": True, "sse2": True}
ARM_HOST = {"neon": True, "fp-armv8": True}


@pytest.fixture
def host(monkeypatch):
    """Pretend the host CPU has the given name and features."""
    def pretend(name, features):
        monkeypatch.setattr(isa, "_host_cpu", lambda: (name, dict(features)))
    return pretend


@pytest.mark.parametrize("name,features,level", [("znver4", AVX512_HOST, "avx512"), ("haswell", AVX2_HOST, "avx2"),
                                                 ("neoverse-v1", ARM_HOST, "portable"),
                                                 ("sandybridge", {"avx": True, "sse2": True}, "portable")])
def test_the_best_level_of_the_cpu_is_chosen_and_numba_left_alone_but_for_avx512s_width(host, name, features,
                                                                                         level):
    host(name, features)
    chosen = isa.select({})
    assert (chosen.level, chosen.forced) == (level, False)
    assert chosen.supported[-1] == "portable"
    if level != "avx512":
        assert (chosen.cpu_name, chosen.cpu_features) == (None, None)
        return
    # The host's features, with LLVM's preference for 256-bit vectors in plain loops off.
    assert chosen.cpu_name == name
    assert isa.parse_features(chosen.cpu_features) == {**features, "prefer-256-bit": False}
    assert isa.select({"CHARRNN_ISA": "avx512"}).cpu_features == chosen.cpu_features


def test_features_the_user_gives_numba_are_kept_at_avx512(host):
    host("znver4", AVX512_HOST)
    chosen = isa.select({"NUMBA_CPU_FEATURES": "+avx512f,+avx2,+fma"})
    assert (chosen.level, chosen.cpu_name, chosen.cpu_features) == ("avx512", None, None)


def test_forcing_avx2_removes_every_avx512_feature_from_what_numba_compiles_for(host):
    host("znver4", AVX512_HOST)
    chosen = isa.select({"CHARRNN_ISA": "avx2"})
    assert (chosen.level, chosen.forced, chosen.cpu_name) == ("avx2", True, "znver4")
    features = isa.parse_features(chosen.cpu_features)
    assert features["avx2"] and features["fma"] and not features["avx512f"] and not features["avx512vl"]
    assert chosen.supported == ("avx512", "avx2", "portable")


def test_forcing_portable_compiles_for_the_architectures_baseline(host):
    host("znver4", AVX512_HOST)
    chosen = isa.select({"CHARRNN_ISA": " Portable "})
    assert (chosen.level, chosen.cpu_name, chosen.cpu_features) == ("portable", "generic", "")


def test_forcing_the_best_level_changes_nothing(host):
    host("haswell", AVX2_HOST)
    chosen = isa.select({"CHARRNN_ISA": "avx2"})
    assert (chosen.level, chosen.forced, chosen.cpu_name, chosen.cpu_features) == ("avx2", True, None, None)


@pytest.mark.parametrize("environ,level", [({"NUMBA_CPU_NAME": "generic"}, "portable"),
                                           ({"NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": "+avx2,+fma"}, "avx2"),
                                           ({"NUMBA_ENABLE_AVX": "0"}, "portable")])
def test_numbas_own_cpu_settings_decide_the_level(host, environ, level):
    host("znver4", AVX512_HOST)
    assert isa.select(environ).level == level


def test_an_unknown_level_is_refused_naming_the_valid_ones(host):
    host("znver4", AVX512_HOST)
    with pytest.raises(CharrnnError) as info:
        isa.select({"CHARRNN_ISA": "sse4"})
    assert str(info.value) == "CHARRNN_ISA must be one of avx512, avx2, portable, got 'sse4'"


@pytest.mark.parametrize("name,features,wanted,supported", [("haswell", AVX2_HOST, "avx512", "avx2, portable"),
                                                            ("neoverse-v1", ARM_HOST, "avx2", "portable")])
def test_a_level_the_cpu_lacks_is_refused_naming_those_it_has(host, name, features, wanted, supported):
    host(name, features)
    with pytest.raises(CharrnnError) as info:
        isa.select({"CHARRNN_ISA": wanted})
    assert str(info.value) == f"CHARRNN_ISA={wanted}: this CPU lacks it; it supports {supported}"


BF16_HOSTS = {"amx": ("sapphirerapids", {**AVX512_HOST, "avx512bf16": True, "amx-tile": True, "amx-bf16": True}),
              "avx512bf16": ("znver5", {**AVX512_HOST, "avx512bf16": True}),
              None: ("skylake-avx512", AVX512_HOST)}


@pytest.mark.parametrize("unit", BF16_HOSTS)
def test_the_bf16_unit_is_the_best_the_cpu_has_and_none_below_avx512(host, unit):
    host(*BF16_HOSTS[unit])
    assert isa.select({}).bf16 == unit
    assert isa.select({"CHARRNN_ISA": "avx2"}).bf16 is None
    assert isa.select({"CHARRNN_ISA": "portable"}).bf16 is None


def test_a_bf16_unit_can_be_forced_if_the_cpu_has_it(host):
    host(*BF16_HOSTS["amx"])
    assert isa.select({"CHARRNN_BF16": "avx512bf16"}).bf16 == "avx512bf16"
    assert isa.select({"CHARRNN_BF16": " AMX "}).bf16 == "amx"
    with pytest.raises(CharrnnError, match=r"^CHARRNN_BF16 must be one of amx, avx512bf16, got 'fp8'$"):
        isa.select({"CHARRNN_BF16": "fp8"})
    with pytest.raises(CharrnnError, match=r"^CHARRNN_BF16=amx: not available here; this process has none at the "
                                           r"engine's level avx2$"):
        isa.select({"CHARRNN_BF16": "amx", "CHARRNN_ISA": "avx2"})
    host(*BF16_HOSTS["avx512bf16"])
    with pytest.raises(CharrnnError, match=r"^CHARRNN_BF16=amx: not available here; this process has avx512bf16$"):
        isa.select({"CHARRNN_BF16": "amx"})


def test_feature_strings_round_trip():
    features = {"avx2": True, "avx512f": False, "fma": True}
    assert isa.parse_features(isa.format_features(features)) == features
    assert isa.format_features(features) == "+avx2,-avx512f,+fma"


# ----- the level of this process, and the code compiled for it -------------------------

def _asm(dispatcher) -> str:
    return "".join(dispatcher.inspect_asm().values())


@pytest.fixture(scope="module")
def wide_fma():
    """A fresh (uncached) kernel of one multiply-add on 16 floats: 512 bits of IR,
    which the level's code generator must fit to what it may use."""
    import numba
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic

    @intrinsic
    def fma16(typingctx, x):
        def codegen(context, builder, signature, args):
            vty = ir.VectorType(ir.FloatType(), 16)
            ptr = builder.bitcast(context.make_array(signature.args[0])(context, builder, args[0]).data,
                                  vty.as_pointer())
            v = builder.load(ptr, align=4)
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty] * 3), "llvm.fma.v16f32")
            builder.store(builder.call(fn, [v, v, v]), ptr, align=4)
            return context.get_dummy_value()

        return types.void(x), codegen

    @numba.njit
    def run(x):
        fma16(x)

    return run


def test_compiled_code_stays_within_the_level(wide_fma):
    """Every kernel, not only the tiles, is compiled for the level: a forced avx2 has
    no 512-bit register anywhere, even where the IR asks for 512-bit vectors; a forced
    portable (on x86, the x86-64 baseline) no 256-bit one and no fused multiply-add;
    avx512's tiles are made of 512-bit multiply-adds, and so is its cell (a plain
    loop). (Fresh, uncached compilations: Numba cannot show the code of a kernel
    loaded from its cache.)"""
    import numba
    import numpy as np

    from charrnn.kernels import FASTMATH, ISA
    from charrnn.kernels.lstm import lstm_cell_forward
    from charrnn.kernels.simd import MR, make_tile

    if not platform.machine().lower().startswith(("x86", "i686", "amd64")):
        pytest.skip("register names are x86's")
    cell = numba.njit(error_model="numpy", fastmath=FASTMATH)(lstm_cell_forward.py_func)
    h, a = np.zeros((2, 32), np.float32), np.zeros((2, 128), np.float32)
    cell(h, h, a, h, 0, 32)
    wide_fma(np.zeros(16, np.float32))
    asm = {"cell": _asm(cell), "wide_fma": _asm(wide_fma)}
    if ISA.level != "portable":
        tile = make_tile(MR, False)

        @numba.njit
        def run_tile(a, bp, c):
            tile(a, 0, bp, c, 0, 0, 0, a.shape[1])

        run_tile(np.zeros((MR, 8), np.float32), np.zeros((8, 64), np.float32), np.zeros((MR, 64), np.float32))
        asm["tile"] = _asm(run_tile)
        assert "vfmadd" in asm["tile"]
        assert ("%zmm" in asm["tile"]) == (ISA.level == "avx512")
    zmm = {name: "%zmm" in code for name, code in asm.items()}
    if ISA.level == "avx512":
        assert zmm["wide_fma"] and zmm["tile"], zmm
        if ISA.cpu_features is not None:  # plain loops too, at full width (isa._full_width)
            assert zmm["cell"], zmm
    else:
        assert not any(zmm.values()), zmm
    if ISA.level == "portable" and ISA.forced:
        for name, code in asm.items():
            assert "%ymm" not in code and "vfmadd" not in code, name


def test_numba_compiles_for_the_level():
    from numba.core import registry

    from charrnn.kernels import ISA

    codegen = registry.cpu_target.target_context.codegen()
    features = isa.parse_features(codegen._tm_features)
    if ISA.cpu_features is not None:
        assert codegen._tm_features == ISA.cpu_features
    assert features.get("avx512f", False) == (ISA.level == "avx512")


# ----- processes: the environment variable, the command line, every level --------------

def _run(args, **env):
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("CHARRNN_ISA", "CHARRNN_BF16"))}
    environ.update(env)
    return subprocess.run(args, capture_output=True, text=True, env=environ, cwd=ROOT)


def test_version_names_the_level_and_the_threads():
    from charrnn import __version__

    done = _run([sys.executable, "-m", "charrnn", "--version"], NUMBA_NUM_THREADS="2")
    assert done.returncode == 0, done.stderr
    detected = isa.select({})
    bf16 = f"bfloat16 on {detected.bf16}" if detected.bf16 else "no bfloat16"
    assert done.stdout == f"charrnn {__version__}, engine {detected.level} (detected), {bf16}, 2 threads\n"
    done = _run([sys.executable, "-m", "charrnn", "-V"], CHARRNN_ISA="portable", NUMBA_NUM_THREADS="1")
    assert re.fullmatch(r"charrnn \S+, engine portable \(forced by CHARRNN_ISA; the CPU supports [a-z0-9, ]*"
                        r"portable\), no bfloat16, 1 thread\n", done.stdout), done.stdout


@pytest.mark.parametrize("args", [["--version"], ["sample", "missing.safetensors"]])
def test_the_command_line_refuses_an_unknown_level_in_one_line(args):
    done = _run([sys.executable, "-m", "charrnn", *args], CHARRNN_ISA="sse4")
    assert done.returncode == 1
    assert done.stderr == "Error: CHARRNN_ISA must be one of avx512, avx2, portable, got 'sse4'\n"


def test_help_loads_neither_numba_nor_llvm():
    code = ("import sys\nfrom charrnn.cli import main\nsys.argv = ['charrnn', '--help']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('numba', 'llvmlite') if m in sys.modules), file=sys.stderr)")
    done = _run([sys.executable, "-c", code])
    assert done.stderr.strip() == "[]"


def test_a_level_set_after_numba_compiled_for_other_features_is_refused():
    code = ("import numba\nnumba.njit(lambda x: x + 1)(1)\n"
            "import charrnn.kernels")
    wanted = "portable"
    done = _run([sys.executable, "-c", code], CHARRNN_ISA=wanted)
    assert done.returncode == 1
    assert f"CharrnnError: CHARRNN_ISA={wanted} must be set before anything in the process compiles with Numba" \
        in done.stderr


# What runs under every level: the products and tiles, a gradient check, a row
# alone against the same row in a batch, and the code the level compiles.
LEVEL_TESTS = ["tests/test_gemm.py",
               "tests/test_cells.py::test_gradients_match_central_differences",
               "tests/test_cells.py::test_threads_splitting_by_units_match_the_reference_and_central_differences",
               "tests/test_cells.py::test_backward_is_the_same_with_one_or_two_threads",
               "tests/test_model.py::test_step_matches_forward_and_each_row_is_independent_of_the_batch",
               "tests/test_model.py::test_generate_equals_stepping_and_sampling_and_each_row_alone",
               "tests/test_isa.py::test_compiled_code_stays_within_the_level",
               "tests/test_isa.py::test_numba_compiles_for_the_level"]


def _other_levels():
    """Every level this machine supports but the one this process runs (which the
    rest of the suite tests)."""
    from charrnn.kernels import ISA

    return [level for level in ISA.supported if level != ISA.level]


@pytest.mark.parametrize("level", isa.LEVELS)
def test_the_engine_tests_pass_under_every_level(level):
    if level not in _other_levels():
        from charrnn.kernels import ISA

        pytest.skip("this process's own level" if level == ISA.level else "this CPU lacks it")
    done = _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *LEVEL_TESTS], CHARRNN_ISA=level)
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-2000:]
    assert re.search(r"\d+ passed", done.stdout) and " failed" not in done.stdout


# The bfloat16 products' own tests, under each unit the CPU has besides this
# process's (an AMX machine has AVX512-BF16 too).
BF16_TESTS = ["tests/test_amx.py", "tests/test_recurrence_bf16.py"]


@pytest.mark.parametrize("unit", isa.BF16_UNITS)
def test_the_bf16_tests_pass_on_every_unit(unit):
    from charrnn.kernels import ISA

    if unit == ISA.bf16 or unit not in isa.bf16_units(ISA.level, isa.compiled_features()[1]):
        pytest.skip("this process's own unit" if unit == ISA.bf16 else "this CPU lacks it")
    done = _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *BF16_TESTS], CHARRNN_BF16=unit)
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-2000:]
    assert re.search(r"\d+ passed", done.stdout) and " failed" not in done.stdout and " skipped" not in done.stdout


# ----- the spin-wait hint ------------------------------------------------------------

@pytest.mark.parametrize("triple,hint", [("x86_64-unknown-linux-gnu", "pause"),
                                         ("aarch64-unknown-linux-gnu", "yield"),
                                         ("powerpc64le-unknown-linux-gnu", None),
                                         ("riscv64-unknown-linux-gnu", None)])
def test_the_spin_wait_hint_is_the_architectures_own(triple, hint):
    """Compiled for each architecture by LLVM: x86's pause only on x86, AArch64's
    yield, and nothing (a plain spinning load) where we know no hint."""
    import llvmlite.binding as llvm
    from llvmlite import ir

    from charrnn.kernels.simd import spin_hint_call

    llvm.initialize_all_targets()
    llvm.initialize_all_asmprinters()
    module = ir.Module(name="hint")
    module.triple = triple
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), []), name="spin")
    builder = ir.IRBuilder(fn.append_basic_block())
    spin_hint_call(builder, triple)
    builder.ret_void()
    text = str(module)
    assert ("llvm.x86" in text) == (hint == "pause")
    parsed = llvm.parse_assembly(text)
    machine = llvm.Target.from_triple(triple).create_target_machine()
    asm = machine.emit_assembly(parsed)
    body = asm[asm.index("spin:"):]
    for name in ("pause", "yield"):
        assert (re.search(rf"\b{name}\b", body) is not None) == (name == hint), body
