"""The ``kvscale`` command. Bad input exits 2 with one line naming what is wrong.

One module per command group; those whose modules pull in Kubernetes clients, the simulator or
the local cluster are imported only when the parser is built, not by the estimator's own code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pydantic import ValidationError
from rich.console import Console

from ..estimator.errors import EstimatorError
from .args import Parser
from .errors import EXIT_USAGE, UsageError, first_error


def build_parser() -> argparse.ArgumentParser:
    from .cluster_commands import add_cluster_commands
    from .estimator_commands import add_estimator_commands
    from .operator_commands import add_operator_commands
    from .perf_commands import add_perf_command
    from .sim_commands import add_sim_commands

    parser = Parser(prog="kvscale", description="Memory-aware LLM autoscaling for Kubernetes")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    add_estimator_commands(sub)
    add_perf_command(sub)
    add_operator_commands(sub)
    add_sim_commands(sub)
    add_cluster_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    console = Console()
    try:
        code: int = args.func(args, console)
        return code
    except EstimatorError as exc:
        print(f"kvscale: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ValidationError as exc:
        print(f"kvscale: error: {first_error(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except UsageError as exc:
        print(f"kvscale: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
