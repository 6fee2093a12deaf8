"""`orthofed validate | run | resume | report | serve`: the command line of orthofed.

Exit status: 0 success, 1 the run failed, 2 the scenario is invalid (every error listed,
one per line, by its path in the file), 130 interrupted. User mistakes never print a
traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from rich.console import Console

from server.cli.sweep import add_sweep
from server.orchestration.execution import (
    EXIT_INTERRUPTED,
    EXIT_INVALID,
    claim_for_resume,
    continue_run,
    execute,
    existing_file,
    existing_run_store,
    load_checked,
    superlink_flag,
)
from server.runs.status import RunStatus


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if getattr(args, "superlink_ca", None) is not None and args.command in ("run", "resume"):
        from server.orchestration.launcher import SUPERLINK_CA_ENV

        # The launcher reads it where it writes the run's Flower connection.
        os.environ[SUPERLINK_CA_ENV] = str(args.superlink_ca.resolve())
    if args.command == "validate":
        return cmd_validate(args.file)
    if args.command == "report":
        return cmd_report(args.run_id, args.runs_dir)
    if args.command == "compare":
        return cmd_compare(args.run_ids, args.runs_dir, args.metric, args.out, args.json)
    if args.command == "resume":
        return cmd_resume(args.run_id, args.runs_dir, args.json, args.deployment, args.superlink)
    if args.command == "credentials":
        return cmd_credentials(args.folder, args.host, args.nodes, args.keep_existing)
    if args.command == "register":
        return cmd_register(args.keys, args.superlink, args.superlink_ca, args.wait_s)
    if args.command == "sweep":
        from server.cli.sweep import cmd_sweep

        return cmd_sweep(args)
    if args.command == "serve":
        from server.api.serve import cmd_serve

        return cmd_serve(args)
    return cmd_run(args.file, args.runs_dir, args.json, args.deployment, args.superlink)


def parser() -> argparse.ArgumentParser:
    """orthofed's arguments: one sub-command per verb."""
    parser = argparse.ArgumentParser(prog="orthofed", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    validate = commands.add_parser("validate", help="check a scenario file, run nothing")
    validate.add_argument("file", type=Path)
    add_run(commands)
    add_resume(commands)
    add_report_and_compare(commands)
    add_serve(commands)
    add_sweep(commands)
    credentials = commands.add_parser(
        "credentials", help="make a secure federation's CA, TLS certificates (SuperLink, "
        "REST API) and SuperNode authentication keys in a folder")
    credentials.add_argument("folder", type=Path)
    credentials.add_argument("--host", action="append", required=True, metavar="HOST",
                             help="a host name or IP address the certificates are valid "
                             "for (repeat; loopback is always added to the SuperLink's)")
    credentials.add_argument("--nodes", type=int, default=1,
                             help="how many SuperNode key pairs (node-0, node-0.pub, ...)")
    credentials.add_argument("--keep-existing", action="store_true",
                             help="a folder that already holds the whole set is kept as it "
                             "is (exit 0; compose runs this on every start)")
    add_register(commands)
    return parser


def add_run(commands) -> None:
    """`orthofed run FILE`: on the simulation engine, the deployment engine here, or the
    SuperLink of a running federation."""
    run = commands.add_parser("run", help="run a scenario to the end with Flower")
    run.add_argument("file", type=Path)
    run.add_argument("--runs-dir", type=Path, default=None,
                     help="where runs and the metrics store go (default: the scenario's runs_dir)")
    run.add_argument("--json", action="store_true",
                     help="print the run summary as one JSON object on the last line")
    engine = run.add_mutually_exclusive_group()
    engine.add_argument("--deployment", action="store_true",
                        help="use Flower's deployment engine: a SuperLink and one SuperNode "
                        "per client on this host (resources.devices pins their GPUs)")
    run.add_argument("--superlink-ca", type=existing_file, default=None, metavar="FILE",
                     help="the CA certificate (PEM) to verify the SuperLink's TLS with (default: "
                     "ORTHOFED_SUPERLINK_CA; none: an insecure SuperLink)")
    engine.add_argument("--superlink", type=superlink_flag, default=None, metavar="HOST:PORT",
                        help="submit to the SuperLink of a running federation (over TLS with "
                        "--superlink-ca, else insecure) "
                        "instead of starting Flower here; its ServerApp and SuperNodes must "
                        "see the runs dir and the data at the same paths")


def add_resume(commands) -> None:
    """`orthofed resume RUN_ID`: continue from the newest checkpoint."""
    resume = commands.add_parser("resume", help="continue a killed, failed or cancelled run "
                                 "from its newest checkpoint")
    resume.add_argument("run_id")
    resume.add_argument("--runs-dir", type=Path, default=Path("runs"),
                        help="where the run's store is (default: runs)")
    resume.add_argument("--json", action="store_true",
                        help="print the run summary as one JSON object on the last line")
    resumed_on = resume.add_mutually_exclusive_group()
    resumed_on.add_argument("--deployment", action="store_true",
                            help="continue on Flower's deployment engine (see run --deployment)")
    resume.add_argument("--superlink-ca", type=existing_file, default=None, metavar="FILE",
                        help="the CA certificate (PEM) to verify the SuperLink's TLS with (default: "
                        "ORTHOFED_SUPERLINK_CA; none: an insecure SuperLink)")
    resumed_on.add_argument("--superlink", type=superlink_flag, default=None,
                            metavar="HOST:PORT", help="continue on the SuperLink of a running "
                            "federation (see run --superlink)")


def add_report_and_compare(commands) -> None:
    """`orthofed report RUN_ID` and `orthofed compare RUN_ID ...`: tables and plots."""
    report = commands.add_parser("report", help="a run's tables, and PNG plots in its folder")
    report.add_argument("run_id")
    report.add_argument("--runs-dir", type=Path, default=Path("runs"),
                        help="where the run's store is (default: runs)")
    compare = commands.add_parser("compare", help="runs side by side: a table and plots")
    compare.add_argument("run_ids", nargs="+", metavar="RUN_ID")
    compare.add_argument("--runs-dir", type=Path, default=Path("runs"),
                         help="where the runs' store is (default: runs)")
    compare.add_argument("--metric", default="eval-acc",
                         help="the per-round metric compared (default: eval-acc)")
    compare.add_argument("--out", type=Path, default=None,
                         help="folder for curves.png and tasks.png (default: RUNS_DIR/compare)")
    compare.add_argument("--json", action="store_true",
                         help="print the comparison as one JSON line instead of the table")


def add_serve(commands) -> None:
    """`orthofed serve`: the REST API and the dashboard over the store."""
    serve = commands.add_parser("serve", help="the REST API (and dashboard) over the store")
    serve.add_argument("--host", default=None, help="interface (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="TCP port (default 8000)")
    serve.add_argument("--runs-dir", type=Path, default=None, help="runs and the store")
    serve.add_argument("--concurrency", type=int, default=None, help="runs at once (default 1)")
    serve.add_argument("--token", default=None,
                       help="bearer token required by requests that change something")
    serve.add_argument("--max-clients", type=int, default=None,
                       help="most clients a posted run may ask for (default: no cap)")
    serve.add_argument("--max-rounds", type=int, default=None,
                       help="most rounds a posted run may ask for, over all the tasks of a "
                       "stream (default: no cap)")
    serve.add_argument("--max-local-steps", type=int, default=None,
                       help="most local steps per round a posted run may ask for "
                       "(default: no cap)")
    serve.add_argument("--sweep-workers", type=int, default=None,
                       help="runs at once of each posted sweep (default 1)")
    serve.add_argument("--superlink-ca", default=None, metavar="FILE",
                       help="the CA certificate (PEM) of that SuperLink's TLS")
    serve.add_argument("--ssl-certfile", default=None, metavar="FILE",
                       help="serve HTTPS with this certificate (PEM), with --ssl-keyfile")
    serve.add_argument("--ssl-keyfile", default=None, metavar="FILE",
                       help="the private key (PEM) of --ssl-certfile")
    serve.add_argument("--superlink", default=None, metavar="HOST:PORT",
                       help="send posted runs to this SuperLink's federation instead of local "
                       "simulations (default: ORTHOFED_SUPERLINK, else none)")
    serve.add_argument("--tensorboard", action="store_true", default=None,
                       help="posted runs without a tracking section write TensorBoard events")
    serve.add_argument("--mlflow", action="store_true", default=None,
                       help="posted runs without a tracking section log to MLflow")
    serve.add_argument("--mlflow-uri", default=None, metavar="URI",
                       help="MLflow tracking URI of posted runs (default: "
                       "sqlite:///<runs-dir>/mlflow.db)")


def cmd_credentials(folder: Path, hosts: list[str], nodes: int, keep_existing: bool) -> int:
    """Write server.security.credentials' files; exit 2 (naming the flag) for bad input
    or a folder that already holds a CA (keys are never overwritten). With
    `keep_existing`, a folder holding the whole set for `nodes` is left as it is."""
    from server.security.credentials import credential_files, make_credentials

    if not 0 <= nodes <= 10_000:
        print(f"credentials: --nodes: must be between 0 and 10000, got {nodes}", file=sys.stderr)
        return EXIT_INVALID
    if (folder / "ca.key").exists():
        missing = [name for name in credential_files(nodes) if not (folder / name).exists()]
        if keep_existing and not missing:
            print(f"credentials: {folder}: kept (it holds the CA and {nodes} node keys)")
            return 0
        why = (f"lacks {', '.join(missing)} for --nodes {nodes}" if keep_existing and missing
               else "already holds a CA (ca.key); give an empty folder")
        print(f"credentials: {folder}: {why}", file=sys.stderr)
        return EXIT_INVALID
    for path in make_credentials(folder, hosts, nodes):
        print(path)
    return 0


def add_register(commands) -> None:
    """`orthofed register KEY ...`: SuperNode public keys, registered (safe to repeat)."""
    register = commands.add_parser(
        "register", help="register SuperNodes' public keys with a SuperLink that runs "
        "--enable-supernode-auth (a key it already holds is fine: safe to repeat)")
    register.add_argument("keys", nargs="+", type=existing_file, metavar="KEY.pub")
    register.add_argument("--superlink", type=superlink_flag, required=True, metavar="HOST:PORT")
    register.add_argument("--superlink-ca", type=existing_file, default=None, metavar="FILE",
                          help="the CA certificate (PEM) to verify the SuperLink's TLS with "
                          "(default: ORTHOFED_SUPERLINK_CA; none: an insecure SuperLink)")
    register.add_argument("--wait-s", type=float, default=120.0, metavar="S",
                          help="how long to wait for the SuperLink to answer (default: 120)")


def cmd_register(keys: list[Path], superlink: str, ca: Path | None, wait_s: float) -> int:
    """Register each key; exit 1 naming the key Flower refused (or the SuperLink that did
    not answer), 2 for a bad --wait-s."""
    from server.orchestration.launcher import superlink_ca
    from server.orchestration.registration import register_keys

    if not 0 < wait_s <= 86_400:
        print(f"register: --wait-s: must be in (0, 86400] seconds, got {wait_s}", file=sys.stderr)
        return EXIT_INVALID
    try:
        outcomes = register_keys(keys, superlink, ca or superlink_ca(), wait_s)
    except RuntimeError as exc:
        print(f"register: {exc}", file=sys.stderr)
        return 1
    for key, outcome in outcomes.items():
        print(f"{key}: {outcome}")
    return 0


def cmd_validate(file: Path) -> int:
    console = Console(stderr=True)
    scenario = load_checked(file, console)
    if scenario is None:
        return EXIT_INVALID
    from scenarios.stream import task_plans, total_rounds

    tasks = f" over {len(task_plans(scenario))} tasks" if scenario.stream else ""
    print(f"{file}: valid ({scenario.name}: {scenario.strategy.name}, "
          f"{scenario.federation.num_clients} clients, {total_rounds(scenario)} rounds{tasks})")
    return 0


def cmd_run(file: Path, runs_dir: Path | None, as_json: bool, deployment: bool = False,
            superlink: str | None = None) -> int:
    from server.runs.layout import RunFolder, new_run_id
    from server.runs.store import MetricsStore

    scenario = load_checked(file, Console(stderr=True))
    if scenario is None:
        return EXIT_INVALID
    runs_dir = (runs_dir or scenario.runs_dir).resolve()
    run_id = new_run_id(scenario.name)
    validated = scenario.model_dump(mode="json")
    store = MetricsStore.in_dir(runs_dir)
    store.create_run(run_id, scenario.name, validated, str(file.resolve()))
    try:
        # Flower's run config carries scalars only: what travels to the ServerApp and
        # every ClientApp is the path of this validated snapshot (data paths resolved),
        # the same file a resume reads; an edit of the user's file mid-run changes nothing.
        snapshot = RunFolder.of(runs_dir, run_id).write_snapshot(validated)
        return execute(scenario, snapshot, run_id, runs_dir, as_json, deployment,
                       resume=False, superlink=superlink)
    except KeyboardInterrupt:  # Ctrl-C before `execute` took the signals over
        store.set_status(run_id, RunStatus.CANCELLED, "interrupted by the user (Ctrl-C)")
        return EXIT_INTERRUPTED


def cmd_resume(run_id: str, runs_dir: Path, as_json: bool, deployment: bool,
               superlink: str | None = None) -> int:
    """Continue a run from its newest checkpoint, with the scenario it was validated with.
    Exit 2 when there is nothing to resume (unknown, completed, still running, or
    already being resumed)."""
    runs_dir = runs_dir.resolve()
    store = existing_run_store("resume", run_id, runs_dir)
    if store is None:
        return EXIT_INVALID
    run = store.get_run(run_id)
    if not claim_for_resume(store, run, runs_dir):
        return EXIT_INVALID
    return continue_run(store, run, runs_dir, as_json, deployment, superlink)


def cmd_report(run_id: str, runs_dir: Path) -> int:
    """Print the run's tables and write its plots; exit 2 for an unknown run."""
    from server.orchestration.progress import clients_table, rounds_table, tasks_table
    from server.cli.report import write_plots
    from server.runs.summary import build_summary

    runs_dir = runs_dir.resolve()
    store = existing_run_store("report", run_id, runs_dir)
    if store is None:
        return EXIT_INVALID
    summary = build_summary(store, run_id)
    out = Console()
    out.print(rounds_table(summary))
    out.print(clients_table(summary))
    if summary["tasks"]:
        out.print(tasks_table(summary))
    for path in write_plots(store, summary, runs_dir / run_id):
        out.print(f"wrote {path}", highlight=False)
    return 0


def cmd_compare(run_ids: list[str], runs_dir: Path, metric: str, out: Path | None,
                as_json: bool) -> int:
    """Print the runs' comparison and write its plots; exit 2 for an unknown run or a
    metric no run recorded."""
    from server.cli.compare import comparison, comparison_table, write_comparison_plots

    runs_dir = runs_dir.resolve()
    store = None
    for run_id in dict.fromkeys(run_ids):
        if (store := existing_run_store("compare", run_id, runs_dir)) is None:
            return EXIT_INVALID
    result = comparison(store, list(dict.fromkeys(run_ids)), metric)
    if all(row["final"] is None for row in result["runs"]):
        recorded = sorted({key for summary in result["summaries"].values()
                           for row in summary["rounds"] for section in ("train", "eval")
                           for key in row[section]})
        print(f"compare: --metric {metric!r}: none of these runs recorded it; they recorded "
              f"{recorded}", file=sys.stderr)
        return EXIT_INVALID
    written = write_comparison_plots(result, out if out is not None else runs_dir / "compare")
    if as_json:
        print(json.dumps({"metric": metric, "runs": result["runs"], "groups": result["groups"],
                          "plots": [str(p) for p in written]}))
        return 0
    console = Console()
    console.print(comparison_table(result))
    for path in written:
        console.print(f"wrote {path}", highlight=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
