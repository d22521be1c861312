"""`python -m tuner.report`: the flags, then the report (tuner/report/__init__.py says what it holds)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tuner.errors import ConfigError, one_line
from tuner.report import __doc__ as REPORT_DOC
from tuner.report.figures import make_figures
from tuner.report.gaps import collect, comparison_notes, gap_rows
from tuner.report.markdown import TABLE_LEGEND, console_table, search_summary, write_markdown
from tuner.study.report_section import arm_experiment_names, study_section
from tuner.text import plural
from tuner.tracking.store import DEFAULT_URI, all_experiments, connect


def run_report(uri: str, spaces: list | None, out_dir, log_artifacts: bool = True) -> int:
    client = connect(uri)
    studies = []
    if spaces:  # a study's name means its arms' experiments too
        spaces, studies = arm_experiment_names(client, spaces)
    searches, best = collect(client, spaces)
    if not searches:
        print(f"No searches in {uri} (no MLflow runs tagged dt.role=search): nothing to report.")
        return 0
    rows = gap_rows(best, searches)
    notes = comparison_notes(best)
    if not best:
        num_trials = plural(sum(len(s.trials) for s in searches), "trial")
        notes.append(
            f"No trial has reported a validation accuracy yet ({num_trials} in "
            f"{plural(len(searches), 'search')}): nothing to compare."
        )

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    made, skipped = make_figures(searches, best, out_dir)
    report_md = out_dir / "report.md"
    write_markdown(report_md, uri, searches, rows, notes, made, skipped)
    experiments = {e.experiment_id: e.name for e in all_experiments(client) if not spaces or e.name in spaces + studies}
    study_md, study_console, study_figures = study_section(client, experiments, out_dir)
    if study_md:  # studies lead: they hold the comparison with intervals
        body = report_md.read_text().split("\n", 1)
        report_md.write_text("\n".join([body[0], "", *study_md, body[1]]))
    made += study_figures

    if rows:
        print("\n".join(console_table(rows)))
        print(TABLE_LEGEND)
    for line in study_console:
        print(line)
    for line in notes:
        print(line)
    for s in searches:
        print(search_summary(s))
    for line in skipped:
        print(line)
    print(f"wrote {report_md} and {plural(len(made), 'figure')} to {out_dir}/")

    if log_artifacts:
        paths = [report_md] + [p for p, _ in made]
        try:
            for s in searches:
                for p in paths:
                    client.log_artifact(s.run_id, str(p), artifact_path="report")
        except Exception as e:  # the report itself is written; failing to upload it is a warning, not an error
            print(f"warning: could not log the report to MLflow ({one_line(e)})", file=sys.stderr)
        else:
            print(f"logged them under report/ on {plural(len(searches), 'search parent run')}")
    return 0


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tuner.report", description=REPORT_DOC.split("\n")[0])
    parser.add_argument("--mlflow-uri", default=DEFAULT_URI, help=f"tracking URI (default {DEFAULT_URI})")
    parser.add_argument("--spaces", nargs="+", metavar="NAME", help="experiments to report (default: all)")
    parser.add_argument("--out", default="report", help="folder for report.md and the figures (default report)")
    parser.add_argument(
        "--no-log-artifacts",
        action="store_true",
        help="do not log the report as artifacts on the searches' parent runs",
    )
    args = parser.parse_args(argv)
    try:
        return run_report(args.mlflow_uri, args.spaces, args.out, log_artifacts=not args.no_log_artifacts)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        from mlflow.exceptions import MlflowException

        if not isinstance(e, MlflowException):
            raise
        # the store answered the first request but failed later (server gone mid-way, a corrupt record)
        print(f"error: reading {args.mlflow_uri} failed: {one_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
