"""``insplad grid GRID_FILE --out RUNS``: run a grid of benchmark trials and merge them into one leaderboard."""

from __future__ import annotations

from pathlib import Path

import click

from insplad_tools.errors import InspladError, one_line_os_errors

COMMAND = "insplad grid"


def _check_out(out: Path, grid_file: Path, data: Path) -> None:
    """RUNS must be disjoint from the inputs, and empty or a grid folder of ours."""
    from insplad_tools.safety import OUTPUT_MARKER, ensure_disjoint, read_marker

    ensure_disjoint(out, {"--data": data, "GRID_FILE": grid_file})
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise InspladError(f"{out}: exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()):
        marker = read_marker(out)
        if marker is None or marker.get("command") != COMMAND:
            raise InspladError(f"{out}: folder is not empty and was not written by {COMMAND} (no {OUTPUT_MARKER} of it); "
                               "choose an empty or new --out")


def _print_plan(plan, runs: Path, engine: str) -> None:  # type: ignore[no-untyped-def]
    from rich.console import Console
    from rich.table import Table

    from insplad_tools.grid.runner import read_failures

    failures = read_failures(runs)
    spec = plan.spec
    table = Table(title=f"grid {spec.name}: {len(spec.variants)} variants x {len(plan.categories)} categories x "
                        f"{len(spec.seeds)} seeds = {len(plan.trials)} trials on {plan.data}")
    for name in ("variant", "method", "options", "done", "to run", "failed before"):
        table.add_column(name, justify="left" if name in ("variant", "method", "options") else "right")
    for variant in spec.variants:
        trials = [t for t in plan.trials if t.variant.name == variant.name]
        done = sum(t.id in plan.done for t in trials)
        failed = sum(t.id in failures for t in trials if t.id not in plan.done)
        options = " ".join(f"{k}={v}" for k, v in variant.options.items())
        table.add_row(variant.name, variant.method, options, str(done), str(len(trials) - done), str(failed))
    remaining = len(plan.trials) - len(plan.done)
    table.caption = f"{len(plan.done)} done, {remaining} to run with --engine {engine}"
    Console(stderr=True).print(table)


@click.command("grid")
@click.argument("grid_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Grid folder: trials/, logs/, results/ (merged); re-run the same command to resume.")
@click.option("--data", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Dataset root (MVTec AD layout); overrides the grid file's dataset.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: this machine (nothing to install); ray: a Ray cluster (pip install \"insplad[ray]\").")
@click.option("--jobs", type=click.IntRange(min=1, max=256), default=1, show_default=True,
              help="local engine: trials at once (1 = in this process; N = N worker processes).")
@click.option("--address", default=None, metavar="ADDR",
              help="ray engine: cluster address (auto, HOST:6379 or ray://HOST:10001); default: a local Ray.")
@click.option("--retries", type=click.IntRange(min=0, max=100), default=None,
              help="Runs again a failed trial up to K times (default: the grid file's retries, else 1).")
@click.option("--dry-run", is_flag=True, help="Print the plan (trials, done, to run) and exit; writes nothing.")
@click.option("--quiet", is_flag=True, help="No live table; one line per finished trial.")
@one_line_os_errors
def grid(grid_file: Path, out: Path, data: Path | None, engine: str, jobs: int, address: str | None,
         retries: int | None, dry_run: bool, quiet: bool) -> None:
    """Run every trial of GRID_FILE (variants x categories x seeds) and merge them into one leaderboard.

    \b
    A trial is one `insplad benchmark` unit (variant, category, seed) in
    RUNS/trials/<variant>/<category>/seed-<s>-<key>/, a valid submission of its own
    (`insplad leaderboard check FOLDER --data DATA --allow-partial`). Finished trials are
    recognised by content (settings, dataset digest, seed) and skipped; a failed trial is
    retried, then reported with its log; an interrupted grid continues when the same command
    is run again. Merged: RUNS/results/<variant>/ (one submission per variant, mean/std/best
    over the seeds) and RUNS/results/leaderboard-<metric>.md/.csv/.png.
    \b
    Examples:
      insplad grid grids/tiny.toml --data insplad-demo/data --out runs/tiny --dry-run
      insplad grid grids/seed000-table2.toml --data data/insplad-fault --out runs/t2 --jobs 2
      insplad grid grids/seed000-table2.toml --out runs/t2 --engine ray --address auto
    """
    from rich.console import Console
    from rich.live import Live

    from insplad_tools.grid.engines import make_engine
    from insplad_tools.grid.merge import merge
    from insplad_tools.grid.runner import make_plan, resolve_data, run_plan
    from insplad_tools.grid.spec import load_grid
    from insplad_tools.grid.trials import read_done
    from insplad_tools.safety import output_lock, read_marker, signals_raise, write_marker

    if engine == "local" and address is not None:
        raise click.UsageError("--address is for --engine ray")
    if engine == "ray" and jobs != 1:
        raise click.UsageError("--jobs is for --engine local; Ray runs as many trials as the cluster's resources allow")
    spec = load_grid(grid_file, data)
    resolved = resolve_data(spec)
    _check_out(out, grid_file, resolved)
    if dry_run:
        plan = make_plan(spec, out)
        _print_plan(plan, out, engine)
        return
    console = Console(stderr=True)
    with output_lock(out, COMMAND), signals_raise():
        out.mkdir(parents=True, exist_ok=True)
        if read_marker(out) is None:
            write_marker(out, COMMAND)
        plan = make_plan(spec, out)
        _print_plan(plan, out, engine)
        k = spec.retries if retries is None else retries
        summary = None
        if plan.remaining:
            runner = make_engine(engine, jobs=jobs, address=address, resources=[v.resources for v in spec.variants])
            if quiet:
                seen = [0]

                def tell(progress):  # type: ignore[no-untyped-def]
                    finished = progress.done + progress.failed + progress.retried
                    if finished != seen[0]:
                        seen[0] = finished
                        console.print(f"{progress.done} done, {progress.failed} failed, {progress.retried} retried, "
                                      f"{progress.queued} queued, {len(progress.running)} running")
                summary = run_plan(plan, out, runner, k, on_progress=tell)
            else:
                from insplad_tools.grid.progress import GridProgress

                progress = GridProgress(total=len(plan.trials), skipped=len(plan.done), slots=runner.slots,
                                        engine=runner.name)
                with Live(progress, console=console, refresh_per_second=2, transient=False):
                    summary = run_plan(plan, out, runner, k, progress=progress)
                console.print()
        for trial in plan.trials:  # what is done now, whoever finished it
            marker = read_done(trial, out, plan.keys[trial.id])
            if marker is not None:
                plan.done[trial.id] = marker
        merged = merge(plan, out)
    for name, categories in merged.variants.items():
        click.echo(f"merged {out / 'results' / name} ({len(categories)} categories)")
    for name, missing in merged.incomplete.items():
        click.echo(f"not merged yet: {name}: {', '.join(missing)} (trials missing or failed)", err=True)
    for table in merged.tables:
        click.echo(f"wrote {table}")
    if summary is not None and summary.failed:
        lines = [f"{tid}: {info['error']} (after {info['attempts']} attempts; log: {info['log']})"
                 for tid, info in summary.failed.items()]
        raise InspladError(f"{len(lines)} trial(s) failed: " + "; ".join(lines[:5])
                           + (f"; and {len(lines) - 5} more (see {out / 'failures.json'})" if len(lines) > 5 else ""))
