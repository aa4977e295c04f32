"""`slimsearch dashboard`: serve a run in optuna-dashboard, with its artifacts."""

from __future__ import annotations

import argparse
import socket
from pathlib import Path

from search.commands.common import console, tcp_port
from search.errors import UsageError


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `dashboard` sub-command to the parser."""
    p = sub.add_parser(
        "dashboard", help="watch a run in optuna-dashboard: trials, objectives, user attrs, artifacts",
        description="Serve the study of RUN_DIR in optuna-dashboard: its objectives by name, every trial's "
        "candidate and measurements (user attrs), feasibility, and the weights and ONNX files of front trials.",
    )
    p.add_argument("run_dir", type=Path, help="run directory, e.g. runs/digits_blocks")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=tcp_port, default=8080, help="port to listen on (default: 8080)")
    p.set_defaults(func=run)


def check_port_free(host: str, port: int) -> None:
    """A UsageError unless `host:port` can be listened on now, so nothing says "listening" on a busy port."""
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as exc:
        raise UsageError(f"--port {port}: cannot serve on {host}:{port}: {exc.strerror or exc}; choose another "
                         "--port (or --host)") from None


def run(args: argparse.Namespace) -> int:
    """Run `slimsearch dashboard`; returns the exit code."""
    from optuna_dashboard import run_server

    from search.results.artifacts import artifact_store
    from search.study.storage import open_study

    config, study = open_study(args.run_dir)
    check_port_free(args.host, args.port)
    console.print(f"optuna-dashboard for study [bold]{config.name}[/] ({len(study.trials)} trials): "
                  f"http://{args.host}:{args.port}/dashboard/  (Ctrl-C stops it)", highlight=False)
    try:
        run_server(study._storage, host=args.host, port=args.port, artifact_store=artifact_store(config.run_dir))
    except OSError as exc:
        raise UsageError(f"cannot serve on {args.host}:{args.port}: {exc.strerror or exc}; choose another --port")
    return 0
