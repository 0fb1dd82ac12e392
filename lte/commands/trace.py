"""`lte trace`: causal tracing — where the model recalls a fact (baselines/tracing.py), for one prompt or averaged
over facts the model knows; `--save` keeps the layer choice where the locate-then-edit editors read it."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from lte.core import files
from lte.core.errors import InputError
from lte.core.models import load_model

EXAMPLES = """examples:
  lte trace "The Space Needle is located in the city of" --subject "Space Needle"
  lte trace --dataset known_1000 --limit 200 --samples 3 --out trace-known --save
  lte eval --editor memit --set traced=true --dataset counterfact --limit 100
"""


def register(commands) -> None:
    from baselines.tracing import KINDS, TraceConfig

    defaults = TraceConfig()
    parser = commands.add_parser(
        "trace", help="causal tracing: where the model stores a fact",
        description="Corrupt the subject's input embeddings with noise, restore one hidden state (or a window of "
        "MLP or attention outputs) at a time from the clean run, and measure how much of the answer's probability "
        "comes back (indirect effect). With PROMPT: one fact's heatmap (tokens × layers) per kind. With --dataset: "
        "the average indirect effect per layer at the subject's last token, the token after it and the last token, "
        "over facts the model answers right; --save writes it next to the model's statistics, where "
        "`--set traced=true` of rome, memit, emmet, alphaedit and coachhook takes its layers from.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prompt", nargs="?", help="a prompt naming the subject, answered by its next token")
    parser.add_argument("--subject", help="the subject in PROMPT (its tokens are corrupted)")
    parser.add_argument("--answer", help="the answer to trace (default: the model's own next token)")
    parser.add_argument("--dataset", help="facts to average over: known_1000 (ROME's known facts, under the "
                        "datasets folder) or a file in any format lte reads")
    parser.add_argument("--limit", type=int, default=200, help="facts the model knows to trace (default 200)")
    parser.add_argument("--kind", nargs="+", choices=KINDS, default=list(KINDS),
                        help="what is restored: hidden state, MLP output, attention output (default: all)")
    parser.add_argument("--samples", type=int, default=defaults.samples,
                        help="noise draws per fact (default %(default)s, as the reference)")
    parser.add_argument("--noise", type=float, default=defaults.noise,
                        help="noise standard deviation in units of σ, the spread of subject-token embeddings "
                        "(default %(default)s, as the reference)")
    parser.add_argument("--window", type=int, default=defaults.window,
                        help="layers restored together for mlp and attn (default %(default)s, as the reference)")
    parser.add_argument("--chat", action="store_true",
                        help="trace the prompt as the editors render it (chat template), not the bare prompt")
    parser.add_argument("--out", default="lte-trace", help="folder for figures and tables (default ./lte-trace)")
    parser.add_argument("--save", action="store_true",
                        help="with --dataset: save the summary with the model's statistics (HOME/stats)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run)


def run(args, settings) -> int:
    from baselines.tracing import TraceConfig

    if bool(args.prompt) == bool(args.dataset):
        raise InputError("lte trace: give either PROMPT (with --subject) or --dataset")
    if args.prompt and not args.subject:
        raise InputError("lte trace PROMPT: --subject is required (the words of PROMPT to corrupt)")
    if args.save and not args.dataset:
        raise InputError("lte trace: --save needs --dataset (the layer choice is an average over facts)")
    cfg = TraceConfig(samples=args.samples, noise=args.noise, window=args.window, chat=args.chat)
    loaded = load_model(settings.model, settings.home, **settings.load_options)
    out = Path(args.out).expanduser()
    if args.prompt:
        return trace_one(loaded, args, cfg, out)
    return trace_dataset(loaded, args, cfg, out, settings)


def trace_one(loaded, args, cfg, out: Path) -> int:
    from baselines.trace_plots import heatmap
    from baselines.tracing import noise_scale, trace_fact

    sigma = noise_scale(loaded)
    for kind in args.kind:
        started = time.perf_counter()
        trace = trace_fact(loaded, args.prompt, args.subject, kind, cfg, sigma, answer=args.answer)
        seconds = time.perf_counter() - started
        files.write_json(out / f"trace-{kind}.json", trace.to_json() | {"sigma": sigma, "seconds": seconds})
        figure = heatmap(trace, out / f"trace-{kind}.png", cfg.window)
        print(f"{kind}: p({trace.answer.strip()!r}) clean {trace.clean:.4f}, subject corrupted {trace.corrupted:.4f} "
              f"({seconds:.1f} s) -> {figure}")
        for token, layer, effect in trace.strongest(5):
            print(f"  token {token!r:>14}  layer {layer:>3}  indirect effect {effect:+.4f}")
    return 0


def trace_dataset(loaded, args, cfg, out: Path, settings) -> int:
    from tqdm.auto import tqdm

    from baselines.statistics import trace_path
    from baselines.trace_plots import aie_plot
    from baselines.tracing import (
        average_effects,
        noise_scale,
        subject_range,
        summary_positions,
        trace_fact,
        traced_text,
    )
    from lte.core.catalog import dataset_path
    from lte.core.datasets import load_cases

    label, path = dataset_path(args.dataset, settings)
    if not path.is_file():
        raise InputError(f"--dataset {args.dataset}: no such file {path}")
    facts = known_facts(loaded, load_cases(path), cfg, args.limit, not args.no_progress)
    sigma = noise_scale(loaded)
    cache_file = out / "facts.json"
    cache = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    settings_key = json.dumps({"samples": cfg.samples, "noise": cfg.noise, "window": cfg.window, "chat": cfg.chat,
                               "seed": cfg.seed, "sigma": round(sigma, 8), "model": loaded.spec,
                               "text": traced_text(loaded.tokenizer, "", cfg)}, sort_keys=True)
    if cache.get("settings") != settings_key:
        cache = {"settings": settings_key, "traces": {}, "seconds": {}}
    traces: dict[str, list] = {kind: [] for kind in args.kind}
    bar = tqdm(total=len(facts) * len(args.kind), desc="tracing", disable=args.no_progress)
    for case_id, edit in facts:
        start, stop, length = subject_range(loaded, edit.prompt, edit.subject, cfg)
        positions = summary_positions(length, (start, stop))
        for kind in args.kind:
            key = f"{kind}:{case_id}"
            if key not in cache["traces"]:
                began = time.perf_counter()
                trace = trace_fact(loaded, edit.prompt, edit.subject, kind, cfg, sigma, positions)
                cache["traces"][key] = trace.to_json()
                cache["seconds"][key] = time.perf_counter() - began
                files.write_json(cache_file, cache, indent=None)
            traces[kind].append(from_json(cache["traces"][key]))
            bar.update()
    bar.close()
    seconds = {kind: sum(cache["seconds"].get(f"{kind}:{c}", 0.0) for c, _ in facts) / len(facts)
               for kind in args.kind}
    summary = {"model": settings.portable(loaded.spec), "dataset": Path(label).name, "facts": len(facts),
               "samples": cfg.samples,
               "noise": cfg.noise, "sigma": sigma, "window": cfg.window, "chat": cfg.chat,
               "seconds_per_fact": seconds, "kinds": {kind: average_effects(traces[kind]) for kind in args.kind}}
    files.write_json(out / "summary.json", summary)
    files.write_text(out / "summary.txt", summary_table(summary))
    aie_plot(summary, out / "aie.png")
    print(summary_table(summary))
    print(f"figures and tables in {out}")
    if args.save:
        if "mlp" not in summary["kinds"]:
            raise InputError("lte trace --save: the layer choice reads the MLP trace; include --kind mlp")
        files.write_json(trace_path(loaded, settings.home), summary)
        print(f"saved for `--set traced=true`: {trace_path(loaded, settings.home)}")
    return 0


def known_facts(loaded, cases, cfg, limit: int, progress: bool) -> list:
    """(case id, edit) of the first `limit` facts whose answer is the model's next token."""
    from tqdm.auto import tqdm

    from baselines.tracing import knows

    chosen = []
    for case in tqdm(cases, desc="facts the model knows", disable=not progress):
        edit = case.edit
        if knows(loaded, [edit.prompt], [" " + edit.target_new.strip()], cfg)[0]:
            chosen.append((case.case_id, edit))
            if len(chosen) == limit:
                break
    if not chosen:
        raise InputError("lte trace --dataset: the model answers none of these facts right; nothing to trace")
    if len(chosen) < limit:
        print(f"only {len(chosen)} of {len(cases)} facts are answered right by the model; tracing those")
    return chosen


def from_json(item: dict):
    import numpy as np

    from baselines.tracing import FactTrace

    return FactTrace(item["prompt"], item["subject"], item["answer"], item["kind"], item["tokens"],
                     tuple(item["subject_range"]), item["positions"], item["clean"], item["corrupted"],
                     np.asarray(item["scores"]))


def summary_table(summary: dict) -> str:
    """AIE per layer, a column per (kind, position); the peak of each column marked."""
    import numpy as np

    columns = [(kind, i, position) for kind, table in summary["kinds"].items()
               for i, position in enumerate(table["positions"])]
    lines = [f"average indirect effect over {summary['facts']} facts ({summary['dataset']}), {summary['samples']} "
             f"noise draws each, noise {summary['noise']}σ (σ = {summary['sigma']:.4f}), window {summary['window']}",
             "seconds per fact: " + ", ".join(f"{k} {v:.2f}" for k, v in summary["seconds_per_fact"].items())]
    for kind, table in summary["kinds"].items():
        lines.append(f"{kind}: P[answer] clean {table['clean']:.4f}, corrupted {table['corrupted']:.4f}, "
                     f"average total effect {table['ate']:.4f}")
    short = {"last subject token": "subj-last", "first subsequent token": "next", "last token": "last"}
    lines.append("layer " + " ".join(f"{kind + ':' + short[p]:>16}" for kind, _, p in columns))
    peaks = {(kind, i): int(np.argmax(summary["kinds"][kind]["aie"][i])) for kind, i, _ in columns}
    layers = len(next(iter(summary["kinds"].values()))["aie"][0])
    for layer in range(layers):
        cells = []
        for kind, i, _ in columns:
            value = summary["kinds"][kind]["aie"][i][layer]
            cells.append(f"{value:>15.4f}" + ("*" if peaks[(kind, i)] == layer else " "))
        lines.append(f"{layer:>5} " + " ".join(cells))
    return "\n".join(lines) + "\n"
