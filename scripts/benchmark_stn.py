"""Benchmark of the STN layers and of one STN training step against PyTorch, side by side.

Times, in one run and with the same number of threads for both libraries
(``varlearn.threads`` and ``threadpoolctl`` for NumPy's BLAS,
``torch.set_num_threads``):

* one plain convolution ``C -> C`` (3x3, "same" zero padding) forward + backward
  (input and kernel gradients) on a batch ``B x C x S x S``: varlearn's NCHW
  wrappers (:func:`varlearn.stn.layers.conv2d` / ``conv2d_backward``, which add
  the layout conversions), varlearn's padded kernels (what the models run) and
  ``torch.nn.functional.conv2d`` with autograd;
* one STN training step of model A (:class:`varlearn.stn.DnCNNSTN`, ``depth``
  gated convolutions, ``channels`` channels, per-example channel dropout, MSE
  loss on the residual output, Adam): varlearn forward + backward + Adam
  (:class:`varlearn.stn.optim.Adam`) against the same network written here in
  PyTorch (per-channel gains ``A λ̃``, ReLU, inverted channel dropout,
  ``torch.optim.Adam``) in two ways: "stacked" (one convolution with the
  elementary and response kernels stacked into ``2C`` outputs, gated
  afterwards; the STN papers' form) and "grouped" (a kernel per example,
  ``K_e + diag(g_w) K_h``, as one grouped convolution, which is what varlearn
  computes); the "vs torch" column of the step divides by the faster of the
  two.  For context, a plain (ungated) DnCNN of the same depth and width in PyTorch;
* with ``--methods``, alternatives for the forward correlation ``C -> 2C``
  on the padded layout: per-tap GEMMs with accumulation (whole batch, blocks),
  one im2col + one GEMM, the taps stacked along the outputs (one GEMM, shifted
  sums), varlearn's blocked im2col + GEMM, and the per-example kernels
  ``C -> C`` of the STN layer (half the outputs), beside PyTorch's;
* memory over ``--steps`` varlearn training steps: traced Python/NumPy
  allocations (``tracemalloc``) alive after step 5 and after the last step,
  their peak, and the process RSS; a growth of the live allocations with the
  number of steps would be a leak.

The numbers are the minimum wall and CPU (process) seconds over ``--repeat``
rounds after one warm-up call; each round times every case once, in turn, so
that all cases see the same load.  The "vs torch" columns divide by
PyTorch's time for the same case (for the STN step, by the faster of its two
PyTorch versions).  Timings on shared machines are noisy: compare the ratios of one run.
PyTorch is imported here only (it is never a dependency of varlearn); without
it the PyTorch columns are empty.

Usage::

    nice -n 10 python scripts/benchmark_stn.py [--threads 1] [--batch 32] [--size 40] [--depth 5]
                                               [--channels 32] [--repeat 5] [--steps 50] [--quick] [--methods]
                                               [--json PATH]
"""
from __future__ import annotations

import argparse

import numpy as np

import varlearn
from varlearn._io import dump_json
from varlearn.stn.benchmark import conv_methods, interleaved, memory_growth, torch_cases, varlearn_conv, varlearn_step


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=40)
    ap.add_argument("--depth", type=int, default=5)
    ap.add_argument("--channels", type=int, default=32)
    ap.add_argument("--n-hyper", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--quick", action="store_true", help="batch 4, 2 repeats, 10 memory steps")
    ap.add_argument("--json", default=None)
    ap.add_argument("--no-torch", action="store_true", help="varlearn only")
    ap.add_argument("--methods", action="store_true",
                    help="also time alternative forward-convolution methods (C -> 2C outputs)")
    args = ap.parse_args(argv)
    if args.quick:
        args.batch, args.repeat, args.steps = 4, 2, 10
    from threadpoolctl import threadpool_limits  # noqa: PLC0415


    rng = np.random.default_rng(0)
    # varlearn's own thread policy ("auto") would otherwise give BLAS one thread
    with varlearn.threads(args.threads), threadpool_limits(args.threads):
        nchw, padded = varlearn_conv(args.batch, args.channels, args.size, rng)
        step, model = varlearn_step(args, rng)
        cases = {"conv fwd+bwd, varlearn NCHW": nchw, "conv fwd+bwd, varlearn padded": padded,
                 "STN step, varlearn": step}
        tc = None if args.no_torch else torch_cases(args, rng)
        if tc is not None:
            cases.update({"conv fwd+bwd, torch": tc["conv"], "STN step, torch stacked": tc["stn_step"],
                          "STN step, torch grouped": tc["stn_grouped_step"],
                          "plain DnCNN step, torch": tc["plain_step"]})
        if args.methods:
            cases.update({f"fwd conv {k}": f for k, f in conv_methods(args.batch, args.channels, args.size,
                                                                        rng).items()})
            if tc is not None:
                cases["fwd conv C -> 2C, torch"] = tc["fwd2c"]
        rows, cpu = interleaved(cases, args.repeat)
        mem = memory_growth(step, args.steps)
    shape = f"B={args.batch} C={args.channels} {args.size}x{args.size} depth={args.depth} float32"
    print(f"# {shape}, threads={args.threads}, torch {tc['version'] if tc else 'not installed'}, "
          f"model A weights: {model.n_weights}")
    print(f"{'case':48s} {'wall s':>9s} {'vs torch':>9s} {'CPU s':>9s} {'vs torch':>9s}")

    def reference(table, name):
        if name.startswith("fwd"):
            return None
        if name.startswith("conv"):
            return table.get("conv fwd+bwd, torch")
        stn = [table[k] for k in ("STN step, torch stacked", "STN step, torch grouped") if k in table]
        return min(stn) if stn else None

    for name in rows:
        cells = []
        for table in (rows, cpu):
            r = reference(table, name)
            ratio = f"{table[name] / r:9.2f}" if r and "torch" not in name else f"{'':9s}"
            cells.append(f"{table[name]:9.4f} {ratio}")
        print(f"{name:48s} {' '.join(cells)}")
    print("memory over steps: " + ", ".join(f"{k}={v:.1f}" for k, v in mem.items()))
    if args.json:
        dump_json(args.json, {"shape": shape, "threads": args.threads, "seconds": rows, "cpu_seconds": cpu,
                              "memory": mem})
    return rows, mem


if __name__ == "__main__":
    main()

