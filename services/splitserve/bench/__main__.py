"""`python -m splitserve.bench`: the bench without the `splitserve` command (e.g. on a GPU host)."""

import argparse
import sys

from splitserve.bench.cli import add_bench_arguments, run_bench

parser = argparse.ArgumentParser(prog="splitserve bench", description=__doc__)
add_bench_arguments(parser)
sys.exit(run_bench(parser.parse_args()))
