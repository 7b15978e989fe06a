"""One-off investigations, not part of `make bench`: each explains one figure of the
suite and runs on its own as `python -m benchmarks.probes.<name> [-h]`.

  profile_step   where a training step's time goes, phase by phase
  gemm_shapes    charrnn's matrix products against NumPy's BLAS on a step's shapes
  loop_overhead  how much of a layer's time loop is its recurrent product
"""
