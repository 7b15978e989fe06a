"""The report's header: when, which code, on what machine, with which limits. The
figures below it are only meaningful beside the machine and its vector ISA."""

from __future__ import annotations

import os

from benchmarks.common import (BATCH, CORPUS, EMBED, REPO, SEED, SEQ, THREAD_VARS, command_line, cpu_name, git_state,
                               isa_env, machine, now_utc, versions)


def isa_text(suite) -> str:
    """What each library may use: the --isa limit's variables, and the capability
    PyTorch's kernels report under them."""
    torch = f" (PyTorch's kernels report {suite.torch['capability']})" if suite.torch else ""
    if suite.isa is None:
        return f"no limit: each library's default{torch}"
    limits = {lib: ", ".join(f"{k}={v}" for k, v in isa_env(lib, suite.isa).items()) for lib in ("charrnn", "torch")}
    return f"--isa {suite.isa}: charrnn {limits['charrnn']}; torch {limits['torch']}{torch}"


def meta(suite, busy_start: float) -> dict:
    a = suite.args
    return {"date": now_utc().isoformat(), "command": command_line(),
            "via_make": bool(os.environ.get("MAKELEVEL")), "machine": machine(),
            "versions": versions(suite.torch and suite.torch["version"]), "git": git_state(),
            "threads": suite.threads, "isa_limit": suite.isa,
            "torch_capability": suite.torch and suite.torch["capability"], "settings": a.settings,
            "quick": a.quick, "reuse_cache": a.reuse_cache, "rows": [r.key for r in suite.rows],
            "sections": suite.sections, "load_average_start": os.getloadavg(), "busy_cores_start": busy_start}


def write_header(suite, busy_start: float) -> None:
    m = suite.results["meta"] = meta(suite, busy_start)
    mach, v, g = m["machine"], m["versions"], m["git"]
    changes = f" + uncommitted changes to {', '.join(g['engine_changes'])}" if g["engine_changes"] else ""
    quick = " (--quick: smoke test, numbers not meaningful)" if suite.args.quick else ""
    suite.out(f"charrnn benchmark{quick}")
    suite.out(f"  date      {m['date'][:16].replace('T', ' ')} UTC")
    suite.out(f"  command   {m['command']}{' (via make bench)' if m['via_make'] else ''}")
    suite.out(f"  code      charrnn {v['charrnn']}, commit {g['commit']}{changes}")
    suite.out(f"  machine   {cpu_name(mach)}, {mach['cores']} cores ({mach['usable_cores']} usable); "
              f"{mach['memory_gb']} GB RAM; {mach['os']}{', virtual machine' if mach['virtualised'] else ''}")
    suite.out(f"  ISA       {' '.join(mach['isa']) or 'none of avx512f, avx2, fma'}")
    suite.out(f"  limit     {isa_text(suite)}")
    suite.out(f"  caches    {mach['caches']}")
    suite.out(f"  software  Python {v['python']}, numpy {v['numpy']}, numba {v['numba']} "
              f"(llvmlite {v['llvmlite']}), torch {v['torch'] or 'not installed'}")
    suite.out(f"  threads   {suite.threads} for every library ({', '.join(THREAD_VARS)}, torch.set_num_threads)")
    suite.out(f"  shapes    B={BATCH}, T={SEQ}, embedding {EMBED}, vocabulary {suite.vocab_size} "
              f"({CORPUS.relative_to(REPO)}); both libraries start from the same weights "
              f"(charrnn's initialisation, seed {SEED})")
    suite.out(f"  other     {busy_start:.2f} cores busy with other processes just before the start "
              f"(1-minute load average {m['load_average_start'][0]:.2f})")
    suite.out()
