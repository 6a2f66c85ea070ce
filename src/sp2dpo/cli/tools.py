"""The auditing and housekeeping subcommands: audit diff, verify, numerics, sweep, params,
plots-template."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from sp2dpo import audit
from sp2dpo.cli.common import (
    Subparsers,
    add_params,
    finite_float,
    load_params,
    non_negative_float,
    non_negative_int,
    positive_int,
)
from sp2dpo.core import artifacts, config
from sp2dpo.core.entry import print_json
from sp2dpo.report import plots_html

# ------------------------------------------------------------------------------ audit


def _cmd_audit_diff(args: argparse.Namespace) -> int:
    if args.json and args.format not in (None, "json"):
        raise ValueError(f"--json and --format {args.format} ask for two formats; give one")
    envelope = None
    if (args.beta_min is None) != (args.beta_max is None):
        raise ValueError("--beta-min and --beta-max go together (the envelope the artifacts must lie in)")
    if args.beta_min is not None:
        if not 0 < args.beta_min < args.beta_max:
            raise ValueError(f"--beta-min {args.beta_min} and --beta-max {args.beta_max}: need 0 < min < max")
        envelope = (args.beta_min, args.beta_max)
    pairs = audit.load_pairs(args.pairs) if args.pairs else None
    result = audit.diff(
        audit.load_side(args.old, envelope=envelope),
        audit.load_side(args.new, envelope=envelope),
        column=args.column,
        threshold=args.threshold,
        category_column=args.category_column,
        allow_panel_change=args.allow_panel_change,
        pairs=pairs,
        top=args.top,
    )
    print(audit.render(result, "json" if args.json else args.format or "text"), end="")
    changed = result["n_changed"] + result["added"] + result["removed"]
    return 1 if args.fail_on_change and changed > 0 else 0


def add_audit(sub: Subparsers) -> None:
    p = sub.add_parser("audit", help="audit beta artifacts")
    audit_sub = p.add_subparsers(dest="audit_command", required=True)
    d = audit_sub.add_parser(
        "diff",
        help="what changed between two beta artifact versions (paths or REV:path)",
        description="Compare two beta artifacts. OLD and NEW are CSV paths or REV:path, REV being "
        "a git revision (commit, branch, tag, experiment ref); files tracked by DVC at that "
        "revision are read through DVC without a checkout.",
    )
    d.add_argument("old", metavar="OLD")
    d.add_argument("new", metavar="NEW")
    d.add_argument("--column", default=audit.DEFAULT_COLUMN, help="beta column to compare")
    d.add_argument("--threshold", type=non_negative_float, default=audit.DEFAULT_THRESHOLD,
                   help="a pair changed when |new - old| exceeds this")
    d.add_argument("--category-column", default=None,
                   help="category column for flips (default: the first category_*_ens column)")
    d.add_argument("--format", choices=["text", "markdown", "json"], default=None,
                   help="output format (default: text)")
    d.add_argument("--json", action="store_true", help="same as --format json")
    d.add_argument("--beta-min", type=finite_float, default=None,
                   help="envelope both artifacts must lie in, with --beta-max (default: the one "
                   "the producing stage recorded in dvc.lock, else the paper's 0.03)")
    d.add_argument("--beta-max", type=finite_float, default=None,
                   help="upper end of that envelope (default: recorded, else the paper's 0.3)")
    d.add_argument("--pairs", default=None, help="pairs table (prompt_id, prompt) for prompt snippets")
    d.add_argument("--top", type=non_negative_int, default=10, help="how many top changed pairs to list")
    d.add_argument("--allow-panel-change", action="store_true",
                   help="compare artifacts produced by different teacher panels")
    d.add_argument("--fail-on-change", action="store_true",
                   help="exit with status 1 when a pair was added or removed, or changed by more "
                   "than the threshold (CI gate)")
    d.set_defaults(func=_cmd_audit_diff)


def _cmd_verify(args: argparse.Namespace) -> int:
    result = audit.verify.verify(args.rev, repo=args.repo, workdir=args.workdir, keep=args.keep,
                                 recall_teachers=args.recall_teachers, tolerance=args.tolerance)
    print(audit.outputs.render(result, "json" if args.json else "text"), end="")
    print(f"verify: {audit.outputs.summary(result)}", file=sys.stderr)
    return audit.verify.EXIT_STATUS[result.verdict]


def add_verify(sub: Subparsers) -> None:
    p = sub.add_parser(
        "verify",
        help="re-run a commit's pipeline from its own code in a fresh clone and compare every "
        "output with its dvc.lock",
        description="Clone the repository at REV, pull its inputs and recorded teacher calls, run "
        "`dvc repro -f --no-run-cache` there with the clone's code, and compare every output REV's "
        "dvc.lock records with the re-run's (md5), saying by file type what differs; an output "
        "whose numbers agree within --tolerance and is otherwise exact is 'equivalent' (float "
        "noise). Exit status: 0 every output identical, 4 the rest equivalent, 1 some differ, "
        "2 usage error, 3 the re-run failed.",
    )
    p.add_argument("rev", metavar="REV", nargs="?", default="HEAD",
                   help="the commit to verify (anything git resolves; default: HEAD)")
    p.add_argument("--recall-teachers", action="store_true",
                   help="call the teachers again instead of answering from REV's recorded calls "
                   "(with real APIs this costs what the annotate stage cost)")
    p.add_argument("--tolerance", type=non_negative_float, default=audit.tolerance.DEFAULT_TOLERANCE, metavar="REL",
                   help="relative deviation of a float (of an adapter tensor: max |delta| over the "
                   "tensor's scale) that still counts as equivalent; 0: identical or differs "
                   "(default: %(default)g)")
    p.add_argument("--keep", action="store_true", help="keep the work folder (clone and repro log)")
    p.add_argument("--workdir", default=None, metavar="DIR",
                   help="where to make the work folder (default: the system's temporary folder)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--repo", default=".", metavar="PATH", help="the repository (default: .)")
    p.set_defaults(func=_cmd_verify)


# ------------------------------------------------------------------------------ sweep (APO)


def _sweep_config(args: argparse.Namespace) -> config.SweepConfig:
    return load_params(args.params, ["sweep"]).sweep


def _cmd_sweep_run(args: argparse.Namespace) -> None:
    from sp2dpo import sweep

    cfg = _sweep_config(args)
    sweep.run_sweep(cfg, jobs=args.jobs, wait=not args.no_wait, timeout_s=args.timeout)
    if not args.no_wait and not args.no_select:
        _select(cfg, args)


def _select(cfg: config.SweepConfig, args: argparse.Namespace) -> int:
    from sp2dpo import sweep

    sweep.select_sweep(cfg, out=args.out, all_commits=args.all_commits, log=not args.no_track,
                       apply=args.apply)
    return 0


def _cmd_sweep_select(args: argparse.Namespace) -> int:
    return _select(_sweep_config(args), args)


def _add_select_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=None, metavar="DIR",
                   help="selection report folder (default: reports/sweep/<sweep.name>)")
    p.add_argument("--all-commits", action="store_true",
                   help="look for the sweep's experiments on every commit (`dvc exp show -A`), not "
                   "only those of the workspace's baseline")
    p.add_argument("--apply", action="store_true",
                   help="apply lambda* to the workspace (`dvc exp apply <best experiment>`)")
    p.add_argument("--no-track", action="store_true", help="do not log the sweep to MLflow")


def add_sweep(sub: Subparsers) -> None:
    p = sub.add_parser(
        "sweep", help="the APO outer loop: sweep process variables through DVC's queue, select lambda*",
        description="`run` queues every setting of params `sweep.variables` as a DVC experiment "
        "(`dvc exp run --queue -S key=value`), starts `sweep.jobs` workers (`dvc queue start`), waits "
        "and selects; `select` reads the finished experiments (`dvc exp show --json`), writes the "
        "selection report (lambda* with its interval, every setting side by side, a plot per swept "
        "variable, best vs runner-up) and logs the sweep to MLflow (a parent run, one child per "
        "experiment).",
    )
    sweep_sub = p.add_subparsers(dest="sweep_command", required=True)
    r = sweep_sub.add_parser("run", help="queue the sweep's experiments, run them with N workers, wait, select")
    add_params(r, "`sweep`")
    r.add_argument("-j", "--jobs", type=positive_int, default=None, help="queue workers (default: sweep.jobs)")
    r.add_argument("--no-wait", action="store_true", help="return once the workers are started")
    r.add_argument("--no-select", action="store_true", help="do not run `select` after the sweep")
    r.add_argument("--timeout", type=non_negative_float, default=None, metavar="SECONDS",
                   help="stop waiting after this long (the queue keeps running)")
    _add_select_args(r)
    r.set_defaults(func=_cmd_sweep_run)
    s = sweep_sub.add_parser("select", help="lambda* from the sweep's finished experiments")
    add_params(s, "`sweep`")
    _add_select_args(s)
    s.set_defaults(func=_cmd_sweep_select)


# ------------------------------------------------------------------------------ numerics


def _cmd_numerics(args: argparse.Namespace) -> int:
    from sp2dpo import numerics
    from sp2dpo.llm import models

    numerics.mode()  # an invalid SP2DPO_NUMERICS is an error here (the import only warned)
    result: dict[str, Any] = {"state": numerics.state(), "pins": numerics.PINS}
    status = 0
    if args.fingerprint:
        prints = {}
        for name, reference in sorted(models.PINNED_FINGERPRINTS.items()):
            found = models.logits_fingerprint(f"{models.LOCAL_PREFIX}{name}")
            found["reference"] = reference
            found["matches"] = found["sha256"] == reference
            status = status or int(not found["matches"])
            prints[name] = found
        result["fingerprints"] = prints
        result["state"] = numerics.state()  # torch is loaded now: its kernels are known
    print_json(result)
    return status


def add_numerics(sub: Subparsers) -> None:
    p = sub.add_parser(
        "numerics",
        help="the CPU numerics in force (pinned AVX2 kernels or native) and, with --fingerprint, "
        "whether this machine reproduces the committed outputs bit for bit",
        description="Print the CPU numerics mode (SP2DPO_NUMERICS: pinned, the default, or "
        "native), the variables it sets and the kernels torch runs. --fingerprint also hashes both "
        "packaged models' logits for a fixed input and compares them with the reference bytes "
        "(exit status 1 when one differs: this machine's outputs will be equivalent, not "
        "identical, to the committed ones).",
    )
    p.add_argument("--fingerprint", action="store_true",
                   help="hash the packaged models' logits (converts them on first use)")
    p.set_defaults(func=_cmd_numerics)


# ------------------------------------------------------------------------------ params, plots


def _cmd_params_docs(args: argparse.Namespace) -> None:
    text = config.reference_markdown()
    if args.out:
        artifacts.write_text(text, args.out)
    else:
        print(text, end="")


def _cmd_params_check(args: argparse.Namespace) -> None:
    params = config.load(args.params)
    print_json({"params": str(args.params), "sections": sorted(params.raw), "ok": True})


def add_params_cmd(sub: Subparsers) -> None:
    p = sub.add_parser("params", help="the params reference, and checking a params file")
    params_sub = p.add_subparsers(dest="params_command", required=True)
    d = params_sub.add_parser("docs", help="every params key with its default and meaning (docs/params.md)")
    d.add_argument("-o", "--out", default=None, help="write to this file (default: stdout)")
    d.set_defaults(func=_cmd_params_docs)
    c = params_sub.add_parser("check", help="validate a params file against the typed config")
    c.add_argument("--params", default=str(config.DEFAULT_PARAMS), metavar="FILE")
    c.set_defaults(func=_cmd_params_check)


def _cmd_plots_template(args: argparse.Namespace) -> None:
    package_json = args.package_json if args.package_json.is_file() else None
    print(plots_html.write_template(args.out, args.node_modules, package_json))


def add_plots_template(sub: Subparsers) -> None:
    p = sub.add_parser("plots-template",
                       help="the offline HTML template for `dvc plots show --html-template`")
    p.add_argument("-o", "--out", type=Path, default=plots_html.DEFAULT_OUT,
                   help=f"template path (default: {plots_html.DEFAULT_OUT})")
    p.add_argument("--node-modules", type=Path, default=Path("node_modules"),
                   help="npm packages folder (default: node_modules)")
    p.add_argument("--package-json", type=Path, default=Path("package.json"),
                   help="file pinning the versions (default: package.json)")
    p.set_defaults(func=_cmd_plots_template)


#: Parser builders, one per subcommand; a new subcommand adds its builder here.
