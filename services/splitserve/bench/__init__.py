"""`splitserve bench`: load generator, CPU accounting and reports for the serving stack."""

from splitserve.bench.cli import add_bench_arguments, run_bench

__all__ = ["add_bench_arguments", "run_bench"]
