"""`lte edit ...`: manage the edit store (add, list, show, rm, restore, search, export, count, calibrate)."""

from __future__ import annotations

from pathlib import Path

from lte.core.catalog import data_files
from lte.core.datasets import load_cases, located_edits
from lte.core.errors import InputError, NotFoundError


def register(commands) -> None:
    parser = commands.add_parser("edit", help="add, list, search and remove stored edits",
                                 description="Manage the edit store named by --store/--chroma-url/--collection.")
    sub = parser.add_subparsers(title="edit commands", metavar="ACTION")
    add = sub.add_parser("add", help="add edits from files (JSONL, JSON, CSV, or any dataset format lte reads)",
                         description="Add every edit in FILE(s). A malformed file is rejected whole, with its "
                         "file, line and field, before anything is written. Re-adding the same edits adds nothing.")
    add.add_argument("files", nargs="+", metavar="FILE")
    add.add_argument("--batch-size", type=int, default=256)
    add.set_defaults(handler=run_add)
    listing = sub.add_parser("list", help="list current edits")
    listing.add_argument("--history", action="store_true", help="include superseded edits")
    listing.add_argument("--limit", type=int, default=0, help="show at most N (default all)")
    listing.add_argument("--offset", type=int, default=0, help="skip the first N (oldest first)")
    listing.set_defaults(handler=run_list)
    show = sub.add_parser("show", help="show one edit as JSON")
    show.add_argument("id")
    show.set_defaults(handler=run_show)
    remove = sub.add_parser("rm", help="delete an edit")
    remove.add_argument("id")
    remove.set_defaults(handler=run_rm)
    restore = sub.add_parser("restore", help="make a superseded edit current again")
    restore.add_argument("id")
    restore.set_defaults(handler=run_restore)
    search = sub.add_parser("search", help="find the edits relevant to a question")
    search.add_argument("query")
    search.add_argument("--k", type=int, default=3)
    search.add_argument("--all", action="store_true", help="show hits below the relevance gate too")
    search.set_defaults(handler=run_search)
    export = sub.add_parser("export", help="write the edits to a JSONL file")
    export.add_argument("file")
    export.add_argument("--history", action="store_true", help="include superseded edits")
    export.set_defaults(handler=run_export)
    count = sub.add_parser("count", help="number of current edits")
    count.add_argument("--history", action="store_true", help="count superseded edits too")
    count.set_defaults(handler=run_count)
    check = sub.add_parser("check", help="check the store's invariants (reads the whole store)",
                           description="Check that every current edit has all its retrieval keys, that no key "
                           "belongs to an edit that is not current, that each fact has one current edit and that "
                           "no write is left half done. Exit status 1 when something is wrong; "
                           "`lte edit reindex` rebuilds the key index from the records.")
    check.set_defaults(handler=run_check)
    reindex = sub.add_parser("reindex", help="rebuild the key index from the edit records",
                             description="Drop the retrieval keys (Chroma) and embed every current edit's keys "
                             "again from the records database, the store's source of truth.")
    reindex.add_argument("--batch-size", type=int, default=256)
    reindex.set_defaults(handler=run_reindex)
    calibrate = sub.add_parser(
        "calibrate", help="fit what decides which edits pass (the scope model, else the gate) to your data",
        description="Fine-tune the store's scope model (or the one trained next to --model) on labelled prompts "
        "from training datasets — each case's own and paraphrase prompts should receive its edit, its locality "
        "prompts (other subjects, other relations of the same subject) should not — and record the result with the "
        "store. Where no scope model exists, or with --gate, fit the fallback relevance gate instead (cosine, "
        "subject coverage and relation similarity combined by a logistic model; retrieval/gate.py). Use training "
        "splits, never the data you evaluate on.")
    calibrate.add_argument("datasets", nargs="*", metavar="DATASET", help="training datasets in any format lte reads")
    calibrate.add_argument("--tables", type=int, default=0, metavar="N",
                           help="also N edits sampled from lte's own tables, with paraphrases, neighbours and other "
                           "relations of the same subject")
    calibrate.add_argument("--limit", type=int, default=1000, help="cases per dataset (default 1000)")
    calibrate.add_argument("--gate", action="store_true", help="fit the relevance gate, not the scope model")
    calibrate.add_argument("--dry-run", action="store_true",
                           help="report how the current decider does on the data, without changing anything")
    calibrate.add_argument("--save-to", metavar="PATH", help="write the result to PATH instead of recording it "
                           "with the store: a scope model folder (for `lte eval --editor lte --set scope=PATH`) or, "
                           "with --gate, a gate JSON (`--set gate=PATH`)")
    calibrate.set_defaults(handler=run_calibrate)
    parser.set_defaults(handler=lambda args, settings: parser.print_help() or 2)


def open_store(settings, decide: bool = False):
    """The store named by the settings; with `decide`, using the scope model trained next to --model when the
    store records none (as `lte ask` and `lte serve` do)."""
    from retrieval.scope import scope_beside
    from retrieval.store import EditStore

    store = EditStore.open(settings.store_dir, settings.chroma_url, settings.collection,
                           records_url=settings.records_url)
    if decide and store.scope is None:
        store.scope = scope_beside(settings.model)
    return store


def run_add(args, settings) -> int:
    located = [pair for path in args.files for pair in located_edits(path)]  # validate every file before writing
    report = open_store(settings).add([edit for edit, _ in located], batch_size=args.batch_size,
                                      where={edit.id: where for edit, where in located})
    print(f"added {report.added}, already stored {report.skipped}, superseded {report.superseded}")
    return 0


def run_list(args, settings) -> int:
    store, shown, offset, after = open_store(settings), 0, args.offset, None
    while not args.limit or shown < args.limit:  # pages of 10,000, each after the last: memory stays flat
        size = min(10_000, args.limit - shown) if args.limit else 10_000
        page = store.list(history=args.history, offset=offset, limit=size, after=after)
        for item in page:
            status = "" if item.status == "current" else f"  [superseded by {item.superseded_by}]"
            print(f"{item.edit.id}  {item.edit.statement}{status}")
        if len(page) < size:
            break
        shown, offset, after = shown + len(page), 0, page[-1].seq
    return 0


def run_check(args, settings) -> int:
    check = open_store(settings).verify()
    print(f"{check.current} current edits, {check.keys} retrieval keys")
    problems = [("current edits missing keys", check.current_without_keys),
                ("edits with keys but not current", check.keys_without_current),
                ("facts with several current edits", check.slots_with_several_current)]
    for what, ids in problems:
        if ids:
            print(f"{what}: {len(ids)} ({', '.join(ids[:5])}{' ...' if len(ids) > 5 else ''})")
    if check.queued:
        print(f"writes left half done: {check.queued}")
    print("ok" if check.ok else "problems found: `lte edit reindex` rebuilds the key index from the records")
    return 0 if check.ok else 1


def run_reindex(args, settings) -> int:
    done = open_store(settings).rebuild_index(batch_size=args.batch_size)
    print(f"reindexed {done} current edits")
    return 0


def run_show(args, settings) -> int:
    from lte.commands.common import print_json

    item = open_store(settings).get(args.id)
    if item is None:
        raise NotFoundError(f"no edit with id {args.id}")
    print_json({**item.edit.to_dict(), "status": item.status, "superseded_by": item.superseded_by})
    return 0


def run_rm(args, settings) -> int:
    if not open_store(settings).delete(args.id):
        raise NotFoundError(f"no edit with id {args.id}")
    print(f"deleted {args.id}")
    return 0


def run_restore(args, settings) -> int:
    item = open_store(settings).restore(args.id)
    print(f"{item.edit.id} is current again: {item.edit.statement}")
    return 0


def run_search(args, settings) -> int:
    store = open_store(settings, decide=True)
    print(f"deciding: {store.decider()}")
    hits = store.search(args.query, k=args.k, gated=not args.all)
    for hit in hits:
        below = "" if hit.score >= store.threshold else "  (below threshold)"
        print(f"{hit.score:.3f}  {hit.edit.id}  {hit.edit.statement}{below}")
    if not hits:
        print(f"no edit scores above the threshold ({store.threshold:.3f})")
    return 0


def run_export(args, settings) -> int:
    count = open_store(settings).export(Path(args.file), history=args.history)
    print(f"wrote {count} edits to {args.file}")
    return 0


def run_count(args, settings) -> int:
    print(open_store(settings).count(history=args.history))
    return 0


def run_calibrate(args, settings) -> int:
    cases = [case for path in data_files(args.datasets, settings, "lte edit calibrate")
             for case in load_cases(path, limit=args.limit)]
    if args.tables:
        import random

        from lte.core.tables import table_cases

        cases += table_cases(args.tables, random.Random(0))
    if not cases:
        raise InputError("lte edit calibrate: give training DATASET files, --tables N, or both")
    store = open_store(settings, decide=True)
    if args.gate or store.scope is None:
        if not args.gate:
            print("no scope model (train one with `lte scope train` or `lte align`): fitting the relevance gate")
        return calibrate_gate(store, cases, args)
    return calibrate_scope(store, cases, args, settings)


def calibrate_gate(store, cases, args) -> int:
    save_in_store = not args.dry_run and not args.save_to
    gate = store.calibrate(cases, save=save_in_store)
    if args.save_to and not args.dry_run:
        gate.save(Path(args.save_to))
    print(f"gate {dict(zip(('cosine', 'subject', 'relation'), gate.weights))}, bias {gate.bias}, "
          f"threshold {gate.threshold:.4f}: precision {gate.fit_precision:.3f}, recall {gate.fit_recall:.3f} "
          f"({gate.fit_related} related, {gate.fit_unrelated} unrelated prompts)"
          + ("" if args.dry_run else f"; saved to {args.save_to or 'the store'}"))
    return 0


def calibrate_scope(store, cases, args, settings) -> int:
    """Fine-tune the scope model on pairs from the user's cases (plus as many relation-noun edits, so it keeps what
    it knew), then record it with the store (or write it to --save-to)."""
    from retrieval.scope import train_scope
    from retrieval.scope_data import ScopeDataConfig, scope_pairs

    current = store.scope
    pairs = scope_pairs([cases], [], ScopeDataConfig(noun_edits=len(cases)))
    before = current.accuracy(pairs)
    if args.dry_run:
        print(f"{current.describe()}: accuracy {before:.3f} on {len(pairs)} pairs from the data (dry run)")
        return 0
    target = Path(args.save_to) if args.save_to else scope_folder(store, settings)
    tuned = train_scope(pairs, target, start_from=current.path)
    if not args.save_to:
        store.set_scope(tuned)
    print(f"scope model fine-tuned on {len(pairs)} pairs: accuracy {before:.3f} -> {tuned.accuracy(pairs):.3f}; "
          f"saved to {target}" + ("" if args.save_to else " and recorded with the store"))
    return 0


def scope_folder(store, settings) -> Path:
    """Where a store's own scope model lives: beside an embedded store's data, else under HOME."""
    return Path(store.directory or settings.home / "scopes") / f"scope-{store.name}"
