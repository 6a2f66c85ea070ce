"""The benchmark tools: winrate, ifeval, arenahard, mtbench, prefeval (a file in, scores out)."""

from __future__ import annotations

import argparse
from typing import Any

from sp2dpo.cli.common import Subparsers, positive_int, rounds_int, seed_int
from sp2dpo.core import artifacts
from sp2dpo.core.entry import print_json
from sp2dpo.evaluate import prefeval
from sp2dpo.evaluate.benchmarks import arenahard, ifeval, mtbench, winrate

# ------------------------------------------------------------------------------ metrics tools


def _cmd_winrate(args: argparse.Namespace) -> None:
    metrics = winrate.evaluate_file(
        args.annotations,
        reference=args.reference,
        instruction_difficulty=args.instruction_difficulty,
        df_gamed=args.df_gamed,
    )
    if args.json:
        print_json(winrate.json_ready(metrics))
    else:
        print(winrate.render_text(metrics), end="")


def add_winrate(sub: Subparsers) -> None:
    p = sub.add_parser(
        "winrate",
        help="AlpacaEval 2.0 metrics of an annotations file: win rate, SE, LC win rate, ...",
        description="AlpacaEval 2.0 leaderboard metrics (percent) of one annotations file. "
        "Without --instruction-difficulty/--df-gamed the length-controlled win rate is an "
        "offline estimate (length-only GLM), labelled as such.",
    )
    p.add_argument(
        "--annotations", required=True,
        help="AlpacaEval annotations (.json or .json.gz): instruction, output_1, generator_1, "
        "output_2, generator_2, preference in [1, 2]",
    )
    p.add_argument(
        "--reference", default=None,
        help="reference model outputs (.json[.gz]); checks instructions and output_1 and gives "
        "each instruction's AlpacaEval index (needed for the official LC)",
    )
    p.add_argument("--instruction-difficulty", default=None, metavar="CSV",
                   help="AlpacaEval instruction_difficulty.csv (official LC; with --df-gamed)")
    p.add_argument("--df-gamed", default=None, metavar="CSV",
                   help="AlpacaEval df_gamed.csv (official LC; with --instruction-difficulty)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_winrate)


def _cmd_ifeval(args: argparse.Namespace) -> None:
    if args.out:
        artifacts.check_output(args.out, inputs=[args.responses, args.input], what="--out")
    everything = ifeval.load_prompts(args.input)
    prompts = ifeval.subset_prompts(everything, args.limit, args.seed)
    result = ifeval.score(prompts, ifeval.load_responses(args.responses, prompts, known=everything))
    if args.out:
        ifeval.write_results(result, args.out)
    out: dict[str, Any] = ifeval.summary(result)
    if args.breakdown:
        out.update(ifeval.breakdown(result))
    if args.json:
        print_json(out)
    else:
        print(ifeval.format_text(result))


def add_ifeval(sub: Subparsers) -> None:
    p = sub.add_parser(
        "ifeval",
        help="score responses on IFEval offline (strict/loose, prompt/instruction level)",
        description="Score responses against the official IFEval prompts with if-verifiable's "
        'rule-based checkers, offline. FILE is JSONL of {"key" or "prompt", "response"}.',
    )
    p.add_argument("--responses", required=True, metavar="FILE", help="responses JSONL(.gz)")
    p.add_argument("--input", default=str(ifeval.DEFAULT_INPUT), metavar="FILE",
                   help=f"IFEval prompts JSONL(.gz) (default: {ifeval.DEFAULT_INPUT})")
    p.add_argument("--limit", type=positive_int, default=None, help="score a seeded subset of this many prompts")
    p.add_argument("--seed", type=seed_int, default=42, help="seed of the --limit subset")
    p.add_argument("--out", default=None, metavar="FILE", help="also write the per-prompt records as JSONL")
    p.add_argument("--breakdown", action="store_true", help="add counts per instruction id and category")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=_cmd_ifeval)


def _cmd_arenahard(args: argparse.Namespace) -> None:
    if args.judgments:
        weight = arenahard.DEFAULT_WEIGHT if args.weight is None else args.weight
        battles = arenahard.judgments_to_battles(
            arenahard.read_judgments(args.judgments), baseline=args.baseline, weight=weight
        )
    else:
        if args.weight is not None:
            raise ValueError("--weight applies to --judgments only (a battle table is weighted)")
        battles = arenahard.read_battles(args.battles)
    scores = arenahard.score_battles(
        battles, baseline=args.baseline, rounds=args.rounds, seed=args.seed
    )
    if args.json:
        print_json(scores)
    else:
        print(arenahard.format_text(scores, baseline=args.baseline), end="")


def add_arenahard(sub: Subparsers) -> None:
    p = sub.add_parser(
        "arenahard",
        help="Arena-Hard-Auto v0.1 scores (win rate vs the baseline) with bootstrap 95%% CIs",
        description="Arena-Hard-Auto v0.1 scoring as the official show_result.py: judge labels "
        "-> battles (game 2 mirrored, strong verdicts weighted) -> Bradley-Terry -> win rate "
        "against the baseline (percent), with a seeded bootstrap over the rows of the table.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--judgments", nargs="+", metavar="FILE",
                     help="official judgment JSONL(.gz) files (question_id, model, judge, games)")
    src.add_argument("--battles", metavar="FILE",
                     help="battle table JSONL(.gz) (question_id, model_a, model_b, winner)")
    p.add_argument("--baseline", default=arenahard.DEFAULT_BASELINE,
                   help=f"the anchor model (default: {arenahard.DEFAULT_BASELINE})")
    p.add_argument("--weight", type=positive_int, default=None,
                   help=f"battle rows per strong verdict, --judgments only "
                   f"(default: {arenahard.DEFAULT_WEIGHT})")
    p.add_argument("--rounds", type=rounds_int, default=arenahard.DEFAULT_ROUNDS,
                   help=f"bootstrap rounds; 0: no interval (default: {arenahard.DEFAULT_ROUNDS})")
    p.add_argument("--seed", type=seed_int, default=arenahard.DEFAULT_SEED,
                   help=f"seed of the bootstrap resamples (default: {arenahard.DEFAULT_SEED})")
    p.add_argument("--json", action="store_true", help="print one JSON object: model -> scores")
    p.set_defaults(func=_cmd_arenahard)


def _cmd_mtbench(args: argparse.Namespace) -> None:
    result = mtbench.scores(mtbench.read_judgments(args.judgments))
    if args.json:
        print_json(result)
    else:
        print(mtbench.format_text(result), end="")


def add_mtbench(sub: Subparsers) -> None:
    p = sub.add_parser(
        "mtbench",
        help="MT-Bench scores (turn 1, turn 2, overall) of a single-answer judgment file",
        description="MT-Bench scores as FastChat show_result.py --mode single: rows rated -1 "
        "are dropped, turn means, and the overall score as the mean of all remaining rows.",
    )
    p.add_argument("--judgments", required=True, metavar="FILE",
                   help="single-answer judgment JSONL(.gz) (question_id, model, judge, score, turn)")
    p.add_argument("--json", action="store_true", help="print one JSON object: model -> scores")
    p.set_defaults(func=_cmd_mtbench)


def _cmd_prefeval(args: argparse.Namespace) -> None:
    result = prefeval.run(
        args.model, args.adapter, args.pairs, revision=args.revision,
        chat_template=args.chat_template, limit=args.limit, max_length=args.max_length,
        max_prompt_length=args.max_prompt_length, batch_size=args.batch_size,
        rounds=args.rounds, seed=args.seed, device=args.device, out=args.out,
    )
    if args.json:
        print_json(result)
    else:
        print(prefeval.format_text(result), end="")


def add_prefeval(sub: Subparsers) -> None:
    p = sub.add_parser(
        "prefeval",
        help="held-out preference accuracy and implicit-reward margins of a student (offline)",
        description="DPO-style held-out preference metrics: for each pair, the chosen and "
        "rejected log-ratios log pi - log pi_ref of the completion tokens as TRL renders them "
        "(pi: the model with --adapter, pi_ref: the adapter disabled), the margin, the accuracy "
        "(ties 1/2) and the reference-free likelihood accuracy, with seeded bootstrap 95% CIs. "
        "Without --adapter the policy is the reference: accuracy 0.5, margins 0.",
    )
    p.add_argument("--model", required=True,
                   help="model spec: local:smollm2-135m-instruct, an HF id or a folder")
    p.add_argument("--adapter", default=None, metavar="DIR",
                   help="PEFT LoRA adapter folder (default: none, the base model)")
    p.add_argument("--pairs", required=True, metavar="FILE",
                   help="pairs (.parquet, .csv, .jsonl[.gz]): prompt_id, prompt, chosen, "
                   "rejected, or the ultrafeedback_binarized Hub layout")
    p.add_argument("--revision", default=None, help="pinned revision of an HF model id")
    p.add_argument("--chat-template", default=None, metavar="TEMPLATE",
                   help="Jinja string or .jinja file overriding the tokenizer's chat template")
    p.add_argument("--limit", type=positive_int, default=None,
                   help="score the first N usable pairs in file order (default: all)")
    p.add_argument("--max-length", type=positive_int, default=prefeval.DEFAULT_MAX_LENGTH,
                   help=f"max prompt+completion tokens, keeping the start "
                   f"(default: {prefeval.DEFAULT_MAX_LENGTH})")
    p.add_argument("--max-prompt-length", type=positive_int, default=prefeval.DEFAULT_MAX_PROMPT_LENGTH,
                   help=f"max prompt tokens, keeping the end "
                   f"(default: {prefeval.DEFAULT_MAX_PROMPT_LENGTH})")
    p.add_argument("--batch-size", type=positive_int, default=prefeval.DEFAULT_BATCH_SIZE,
                   help=f"pairs per forward pass (default: {prefeval.DEFAULT_BATCH_SIZE})")
    p.add_argument("--rounds", type=rounds_int, default=prefeval.DEFAULT_ROUNDS,
                   help=f"bootstrap rounds; 0: no interval (default: {prefeval.DEFAULT_ROUNDS})")
    p.add_argument("--seed", type=seed_int, default=prefeval.DEFAULT_SEED,
                   help=f"seed of the bootstrap resamples (default: {prefeval.DEFAULT_SEED})")
    p.add_argument("--device", default="cpu",
                   help="torch device (default: cpu, in float32; cuda runs in bfloat16)")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="also write the per-pair log-probs, log-ratios and margins as JSONL")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_prefeval)
