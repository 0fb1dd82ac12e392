"""`lte scope train`: train the scope model that decides which retrieved edits answer a question."""

from __future__ import annotations

from pathlib import Path

from lte.core.catalog import DATA_HELP, data_files


def register(commands) -> None:
    from retrieval.scope import ScopeConfig
    from retrieval.scope_data import ScopeDataConfig

    defaults, data = ScopeConfig(), ScopeDataConfig()
    parser = commands.add_parser("scope", help="train the scope model (which retrieved edits answer a question)",
                                 description="The scope model is a cross-encoder over (question, edit prompt) "
                                 "pairs; see retrieval/scope.py.")
    sub = parser.add_subparsers(title="scope commands", metavar="ACTION")
    train = sub.add_parser(
        "train", help="train a scope model on training datasets, lte's tables and relation nouns",
        description="Generate (question, edit prompt, in scope?) pairs from training data — each edit's prompt and "
        "paraphrases pass; the same subject asked about another relation, the same relation about another subject, "
        "a similar-sounding subject and unrelated questions do not (retrieval/scope_data.py) — and train a "
        "cross-encoder on them, starting from the bundled MiniLM embedder. `lte align` runs this too and writes "
        "the model to ALIGNED/scope, where `lte` finds it. Use training splits, never the data you evaluate on.")
    train.add_argument("--data", nargs="*", default=[], metavar="FILE",
                       help=DATA_HELP)
    train.add_argument("--out", help="output folder (default: scope/ inside --model when it is a folder, else "
                       "HOME/scope)")
    train.add_argument("--cases-per-source", type=int, default=data.cases_per_source,
                       help="most cases taken from each file (default %(default)s)")
    train.add_argument("--tables", type=int, default=data.table_edits,
                       help="edits generated from lte's tables (default %(default)s)")
    train.add_argument("--noun-edits", type=int, default=data.noun_edits,
                       help="edits generated from the relation nouns (data/relation_nouns.json; "
                       "default %(default)s)")
    train.add_argument("--near-relations", type=int, default=data.near_relations,
                       help=f"of each relation-noun edit's {data.other_relations} other-relation negatives, how "
                       "many come from the relations nearest its own in meaning (\"mother\" for \"father\"; "
                       "default %(default)s)")
    train.add_argument("--mark-subject", action="store_true",
                       help="read each pair with the edit's subject replaced by one marker token in both texts and "
                       "named after the edit prompt (results/scope-subject-marked.txt; default: the texts as they are)")
    train.add_argument("--epochs", type=int, default=defaults.epochs,
                       help="passes over the pairs (default %(default)s)")
    train.add_argument("--max-steps", type=int, default=defaults.max_steps, help="stop after N steps (0: epochs)")
    train.add_argument("--batch-size", type=int, default=defaults.batch_size,
                       help="pairs per step (default %(default)s)")
    train.add_argument("--learning-rate", type=float, default=defaults.learning_rate, help="(default %(default)s)")
    train.add_argument("--seed", type=int, default=defaults.seed)
    train.set_defaults(handler=run_train)
    parser.set_defaults(handler=lambda args, settings: parser.print_help() or 2)


def default_out(settings) -> Path:
    from retrieval.scope import SCOPE_DIR

    model = Path(settings.model).expanduser()
    return model / SCOPE_DIR if model.is_dir() else settings.home / SCOPE_DIR


def run_train(args, settings) -> int:
    from retrieval.scope import ScopeConfig, train_scope
    from retrieval.scope_data import ScopeDataConfig, training_pairs

    args.data = data_files(args.data, settings)
    out = Path(args.out).expanduser() if args.out else default_out(settings)
    data = ScopeDataConfig(cases_per_source=args.cases_per_source, table_edits=args.tables,
                           noun_edits=args.noun_edits, near_relations=args.near_relations, seed=args.seed)
    pairs = training_pairs(args.data, data)
    cfg = ScopeConfig(epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size,
                      learning_rate=args.learning_rate, seed=args.seed, mark_subject=args.mark_subject)
    model = train_scope(pairs, out, cfg)
    print(f"scope model written to {out}: {len(pairs)} pairs {model.info.mix}, {model.info.train_seconds:.0f} s")
    return 0
