"""The ``mechscope`` command line.

Every error is one line on stderr with exit code 2; ``--debug`` (or ``--traceback``, or the
environment variable ``MECHSCOPE_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from mechscope.errors import ConfigError, MechscopeError
from mechscope.probe import Metric

DEBUG_VARIABLE = "MECHSCOPE_DEBUG"


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but usage errors are a single line."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="mechscope",
        description="Train recurrent networks on motor tasks and compare their mechanisms.",
    )
    parser.add_argument(
        "--debug",
        "--traceback",
        action="store_true",
        help=f"show tracebacks on errors (or set {DEBUG_VARIABLE}=1)",
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)

    plugins = commands.add_parser("plugins", help="list registered components and load errors")
    plugins.add_argument("--json", action="store_true", help="print JSON")
    plugins.set_defaults(handler=_plugins)

    schema = commands.add_parser(
        "schema", help="show a component's config fields (and a probe's metrics)"
    )
    schema.add_argument("kind", help="task, model, trainer, probe, executor or comparison")
    schema.add_argument("name", help="the component's registered name")
    schema.add_argument(
        "--json", action="store_true", help="print the config's JSON schema (probes: + metrics)"
    )
    schema.set_defaults(handler=_schema)

    run = commands.add_parser("run", help="run a suite or experiment file (TOML)")
    run.add_argument("file", type=Path, help="suite TOML ([base], [vary], seeds) or experiment")
    run.add_argument("--out", type=Path, default=Path("mechscope-runs"), help="run store")
    run.add_argument("--force", action="store_true", help="recompute finished runs")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.add_argument("--executor", default=None, help="executor name (local, dask)")
    run.add_argument("--address", default=None, help="dask scheduler address")
    run.add_argument("--report", action="store_true", help="write the report afterwards")
    run.set_defaults(handler=_run)

    script = commands.add_parser(
        "cluster-script",
        help="print the batch script of one worker job of a suite's cluster executor "
        "(dask with a [slurm] table)",
    )
    script.add_argument("file", type=Path, help="suite TOML whose executor has a [slurm] table")
    script.add_argument(
        "--out", type=Path, default=Path("mechscope-runs"), help="run store (shared by the nodes)"
    )
    script.set_defaults(handler=_cluster_script)

    runs = commands.add_parser(
        "runs", help="list the runs in a store: what tells them apart, and their training fit"
    )
    runs.add_argument("store", type=Path, nargs="?", default=Path("mechscope-runs"))
    runs.add_argument(
        "--columns",
        action="append",
        default=[],
        metavar="PATTERNS",
        help="also show the columns matching these comma-separated shell "
        "patterns, e.g. 'jpca.*,fixed_points.attractor_fraction' (repeatable)",
    )
    runs.add_argument("--all", action="store_true", help="show every column")
    runs.set_defaults(handler=_runs)

    report = commands.add_parser("report", help="write an HTML report and tables for a store")
    report.add_argument("store", type=Path, nargs="?", default=Path("mechscope-runs"))
    report.add_argument("--out", type=Path, default=None, help="report folder (STORE/report)")
    report.set_defaults(handler=_report)
    return parser


def _plugins(arguments: argparse.Namespace) -> int:
    from mechscope.plugins import get_plugin_manager

    manager = get_plugin_manager()
    entries = manager.registry.entries()
    if arguments.json:
        # One flat list: components, then one object per plugin that failed to load
        # (kind "load_error"), so a script can filter on "kind" either way.
        payload = [entry.to_json() for entry in entries]
        payload += [failure.to_json() for failure in manager.failures]
        print(json.dumps(payload, indent=1))
        return 0
    width = max((len(e.name) for e in entries), default=4)
    for entry in entries:
        source = f"{entry.distribution or '-'} {entry.version or ''}".strip()
        print(f"{entry.kind:9} {entry.name:{width}}  {source:22} {entry.description}")
    for failure in manager.failures:
        print(f"FAILED    {failure.plugin}: {failure.error}", file=sys.stderr)
    return 0


def _schema(arguments: argparse.Namespace) -> int:
    from mechscope.plugins import get_registry

    entry = get_registry().get(arguments.kind, arguments.name)
    # A probe's metrics are those of its default config (some names follow the config); a
    # probe whose config has required fields has no default config to ask.
    required = any(field.is_required() for field in entry.config_class.model_fields.values())
    metrics: tuple[Metric, ...] = ()
    unavailable = ""
    if entry.kind == "probe" and not required:
        try:
            metrics = entry.build(entry.validate({})).metrics()
        except Exception as error:  # noqa: BLE001 - a plugin's default config or metrics() may fail
            unavailable = f"metrics unavailable: {type(error).__name__}: {error}"
    if arguments.json:
        schema = entry.config_class.model_json_schema()
        if entry.kind == "probe":
            schema["metrics"] = [dataclasses.asdict(metric) for metric in metrics]
        print(json.dumps(schema, indent=1, ensure_ascii=False))
        return 0
    source = f"{entry.distribution or entry.plugin} {entry.version or ''}".strip()
    print(f"{entry.kind} '{entry.name}' ({source}): {entry.description}")
    rows = [_field_row(name, field) for name, field in entry.config_class.model_fields.items()]
    print()
    _print_table(("field", "type", "default", "description"), rows or [("(none)", "", "", "")])
    if entry.kind == "probe":
        print()
        if required:
            print("metrics: this probe's config has required fields; its metrics follow them")
        elif unavailable:
            print(unavailable)
        elif not metrics:
            print("metrics: not declared (suites cannot check this probe's metric names)")
        for kind, title in (
            ("metric", f"metrics (table columns {entry.name}.<name>; default config)"),
            ("setting", "settings (recorded with each run; not findings, not compared)"),
        ):
            chosen = [(m.name, m.unit, m.direction, m.meaning) for m in metrics if m.kind == kind]
            if chosen:
                print(f"{title}:")
                _print_table(("name", "unit", "direction", "meaning"), chosen)
    return 0


def _field_row(name: str, field: Any) -> tuple[str, str, str, str]:
    """One config field as (name, type, default, description) text."""
    import pydantic_core

    if field.is_required():
        default = "(required)"
    else:
        value = field.get_default(call_default_factory=True)
        default = json.dumps(pydantic_core.to_jsonable_python(value), ensure_ascii=False)
    return name, _type_text(field.annotation), default, field.description or ""


def _type_text(annotation: Any) -> str:
    """A type annotation as a reader writes it: ``tuple[float, ...]``, ``str | None``."""
    if isinstance(annotation, type) and not getattr(annotation, "__args__", None):
        return annotation.__name__
    text = repr(annotation).replace("NoneType", "None")
    # Drop module paths (typing.Literal, mechscope_dynamics._fp_config.SearchConfig).
    return re.sub(r"\b(?:[A-Za-z_]\w*\.)+([A-Za-z_]\w*)", r"\1", text)


def _print_table(header: Sequence[str], rows: Sequence[Sequence[str]], *, cap: int = 28) -> None:
    """Columns padded to their widest cell; the last column wraps to the terminal's width.

    A cell wider than `cap` (a long type or default) is cut short in its column and printed in
    full on its own line below the row, so one long value does not widen the whole table.
    """
    import shutil
    import textwrap

    widths = [
        min(max(len(str(row[i])) for row in [header, *rows]), cap) for i in range(len(header) - 1)
    ]
    indent = sum(widths) + 2 * len(widths)
    room = max(shutil.get_terminal_size((120, 24)).columns - indent, 30)
    for row in [header, *rows]:
        cells = [str(cell) for cell in row]
        spilled = [(header[i], cell) for i, cell in enumerate(cells[:-1]) if len(cell) > widths[i]]
        lead = "".join(
            f"{_shorten(cell, width):{width}}  " for cell, width in zip(cells, widths, strict=False)
        )
        lines = textwrap.wrap(cells[-1], room) or [""]
        print((lead + lines[0]).rstrip())
        for line in lines[1:]:
            print(" " * indent + line)
        for column, cell in spilled:
            print(f"{'':{widths[0] + 2}}{column}: {cell}")


def _check_store_path(path: Path, *, option: str) -> None:
    """A store (or report) folder must be a directory or creatable as one, checked up front.

    Raises:
        ConfigError: if `path`, or a folder above it, is an existing file.
    """
    for folder in (path, *path.parents):
        if folder.exists():
            if not folder.is_dir():
                what = "is" if folder == path else f"is inside {folder}, which is"
                raise ConfigError(f"{option} {path} {what} a file, not a directory")
            return


def _run(arguments: argparse.Namespace) -> int:
    from mechscope.suite import Suite, suite_or_experiment

    _check_store_path(arguments.out, option="--out")
    job = suite_or_experiment(arguments.file)
    if isinstance(job, Suite):
        executor = arguments.executor
        if arguments.address is not None:
            executor = {"name": executor or "dask", "address": arguments.address}
        variants = len({run.variant.label for run in job.runs})
        print(
            f"suite '{job.name}': {variants} variants × {len(job.seeds)} seeds "
            f"= {len(job.runs)} runs -> {arguments.out}",
            file=sys.stderr,
        )
        table = job.run(
            executor=executor,
            store=arguments.out,
            force=arguments.force,
            progress=not arguments.quiet,
        )
        counts = table["status"].value_counts().to_dict()
        print(f"suite '{job.name}': " + ", ".join(f"{n} {s}" for s, n in counts.items()))
        for _, row in table[table["status"].isin(_UNFINISHED)].iterrows():
            print(
                f"  {row['status']}: [{row['variant']}] seed {row['seed']} run "
                f"{row['run_id']}: {row['reason'] or 'no reason recorded'}",
                file=sys.stderr,
            )
        if arguments.report:
            _report_path(arguments.out)
        return 0
    if arguments.executor or arguments.address:
        raise ConfigError("--executor/--address apply to suites; this file is one experiment")
    result = job.run(store=arguments.out, force=arguments.force, progress=not arguments.quiet)
    print(f"run {result.run_id}: {result.status} -> {result.directory}")
    if result.status in _UNFINISHED:
        print(f"  {result.status}: {result.trained.reason}", file=sys.stderr)
    for name, value in sorted(result.metrics().items()):
        print(f"  {name:40} {value:.4g}")
    for name, error in result.probe_errors.items():
        print(f"  probe {name} failed: {error}", file=sys.stderr)
    if arguments.report:
        _report_path(arguments.out)
    return 0


#: Statuses of runs whose reason `mechscope run` lists.
_UNFINISHED = ("failed", "diverged")


def _report_path(store: Path, out: Path | None = None) -> None:
    from mechscope.report import write_report

    path = write_report(store, out)
    print(f"report: {path.resolve()}")


def _runs(arguments: argparse.Namespace) -> int:
    from mechscope.store import RunStore

    store = RunStore(arguments.store)
    table = store.runs_table()
    if table.empty:
        print(f"no runs in {arguments.store}")
        return 0
    table = _with_suites(table, store)
    if arguments.all:
        print(table.to_string(index=False, max_colwidth=30))
        return 0
    patterns = [p.strip() for value in arguments.columns for p in value.split(",") if p.strip()]
    columns = _summary_columns(table, patterns)
    shown = table[columns].copy()
    # What tells runs apart is shown in full (two lists of delays may differ only at the end);
    # other text (a failure's reason) is cut short.
    telling = {"variant", *_varying_config(table)}
    for column in shown.columns:
        if column not in telling and shown[column].dtype == object:
            shown[column] = shown[column].map(_shorten)
    print(shown.to_string(index=False))
    hidden = len(table.columns) - len(columns)
    if hidden:
        print(f"({hidden} more columns: --columns PATTERN shows some, --all shows every one)")
    return 0


def _shorten(value: Any, width: int = 40) -> Any:
    return value[: width - 1] + "…" if isinstance(value, str) and len(value) > width else value


def _with_suites(table: Any, store: Any) -> Any:
    """`table` with the ``suite`` and ``variant`` of each run, ordered by suite, variant, seed.

    Variants keep the order of their suite's plan; a run in several suites is listed under the
    first (by name) and names them all. Without suite records the table is sorted by seed.
    """
    places: dict[str, list[tuple[str, int, str]]] = {}
    for record in sorted(store.suite_records(), key=lambda r: r.name):
        variants: dict[str, int] = {}
        for run in record.runs:
            variants.setdefault(run.variant, len(variants))
            place = (record.name, variants[run.variant], run.variant)
            places.setdefault(run.run_id, []).append(place)
    table = table.copy()
    seeds = list(table["seed"]) if "seed" in table else [0] * len(table)
    nowhere = [("\uffff", 0, "-")]  # runs of no suite sort last
    keys = [
        (*places.get(run_id, nowhere)[0][:2], seed, run_id)
        for run_id, seed in zip(table["run_id"], seeds, strict=True)
    ]
    if places:
        suites = [",".join(p[0] for p in places.get(r, [])) or "-" for r in table["run_id"]]
        table.insert(2, "suite", suites)
        table.insert(3, "variant", [places.get(r, nowhere)[0][2] for r in table["run_id"]])
    order = sorted(range(len(table)), key=keys.__getitem__)
    return table.iloc[order].reset_index(drop=True)


_CONFIG_PREFIXES = ("task.", "model.", "trainer.")


def _varying_config(table: Any) -> list[str]:
    """The task, model and trainer settings (and the probe list) that differ between runs."""
    config = [c for c in table.columns if c.startswith(_CONFIG_PREFIXES) or c == "probes"]
    return [c for c in config if table[c].astype(str).nunique() > 1]


def _summary_columns(table: Any, patterns: Sequence[str]) -> list[str]:
    """The columns `mechscope runs` shows by default, plus those matching `patterns`.

    Those are the run id and status (and the reason, where a run did not complete), the suite
    and variant (when the store has suites), the component names, every task, model and trainer
    setting that differs between the runs (lists included), the probe list where it differs,
    the seed, the final training loss and R², then any column matching one of the
    shell-style `patterns`.
    """
    varying = _varying_config(table)
    names = [f"{part}.name" for part in ("task", "model", "trainer")]
    incomplete = "status" in table and bool((table["status"] != "completed").any())
    shown = ["run_id", "status", *(["reason"] if incomplete else []), "suite", "variant"]
    shown += [c for c in names if c not in varying] + varying
    shown += ["seed", "train.loss", "train.r2"]
    shown += [c for c in table.columns if any(fnmatch.fnmatchcase(c, p) for p in patterns)]
    return list(dict.fromkeys(c for c in shown if c in table.columns))


def _cluster_script(arguments: argparse.Namespace) -> int:
    from mechscope.suite import Suite, suite_or_experiment

    job = suite_or_experiment(arguments.file)
    if not isinstance(job, Suite):
        raise ConfigError(f"{arguments.file}: an experiment file; cluster-script needs a suite")
    executor = job.build_executor()
    job_script = getattr(executor, "job_script", None)
    if job_script is None:
        raise ConfigError(
            f"{arguments.file}: its executor has no cluster jobs; use executor = "
            '{ name = "dask", slurm = { cores = 4, memory = "16GB" } }'
        )
    print(job_script(arguments.out.resolve()))
    return 0


def _report(arguments: argparse.Namespace) -> int:
    if arguments.out is not None:
        _check_store_path(arguments.out, option="--out")
    _report_path(arguments.store, arguments.out)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mechscope`` console script."""
    parser = _build_parser()
    arguments = parser.parse_args(argv)
    try:
        return arguments.handler(arguments)
    except KeyboardInterrupt:
        print("mechscope: interrupted; finished runs are kept", file=sys.stderr)
        return 130
    except Exception as error:
        if arguments.debug or os.environ.get(DEBUG_VARIABLE, "") not in ("", "0"):
            raise
        message = _message(error, arguments)
        print(f"mechscope: error: {' '.join(message.split())}", file=sys.stderr)
        return 2


def _message(error: Exception, arguments: argparse.Namespace) -> str:
    """One line for an error: a user error as it is; anything else as a bug, with a hint."""
    if isinstance(error, MechscopeError):
        return str(error)
    if isinstance(error, OSError) and error.filename is not None:
        # The file system refused: say which path, which the user can fix.
        return f"{error.filename}: {error.strerror or error}"
    source = getattr(arguments, "file", None) or getattr(arguments, "store", None)
    where = f" in 'mechscope {arguments.command} {source}'" if source is not None else ""
    return (
        f"unexpected {type(error).__name__}{where}: {error} (validation let this through: a "
        f"bug in mechscope or a plugin; rerun with --traceback or {DEBUG_VARIABLE}=1 to see "
        "where)"
    )


if __name__ == "__main__":
    sys.exit(main())
