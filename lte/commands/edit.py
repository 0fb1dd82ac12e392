"""`lte edit ...`: manage the edit store (add, list, show, rm, restore, search, export, count, calibrate)."""

from __future__ import annotations

from pathlib import Path

from lte.datasets import load_cases, located_edits
from lte.errors import InputError, NotFoundError


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
    calibrate = sub.add_parser(
        "calibrate", help="fit the relevance gate on training data and save it with the store",
        description="Fit the relevance gate (cosine, subject coverage and relation similarity, combined by a "
        "logistic model; see retrieval/gate.py) on labelled prompts from training datasets: each case's own and "
        "paraphrase prompts should pass its edit, its locality prompts (other subjects, other relations of the same "
        "subject) should not. Use training splits, never the data you evaluate on.")
    calibrate.add_argument("datasets", nargs="*", metavar="DATASET", help="training datasets in any format lte reads")
    calibrate.add_argument("--tables", type=int, default=0, metavar="N",
                           help="also N edits sampled from lte's own tables, with paraphrases, neighbours and other "
                           "relations of the same subject (what `lte align` fits its gate on)")
    calibrate.add_argument("--limit", type=int, default=1000, help="cases per dataset (default 1000)")
    calibrate.add_argument("--dry-run", action="store_true", help="report without saving the gate")
    calibrate.add_argument("--save-to", metavar="FILE", help="write the gate as JSON to FILE instead of the store "
                           "(for `lte eval --editor lte --set gate=FILE`)")
    calibrate.set_defaults(handler=run_calibrate)
    parser.set_defaults(handler=lambda args, settings: parser.print_help() or 2)


def open_store(settings):
    from retrieval.store import EditStore

    return EditStore.open(settings.store_dir, settings.chroma_url, settings.collection)


def run_add(args, settings) -> int:
    located = [pair for path in args.files for pair in located_edits(path)]  # validate every file before writing
    report = open_store(settings).add([edit for edit, _ in located], batch_size=args.batch_size,
                                      where={edit.id: where for edit, where in located})
    print(f"added {report.added}, already stored {report.skipped}, superseded {report.superseded}")
    return 0


def run_list(args, settings) -> int:
    stored = open_store(settings).list(history=args.history)
    for item in stored[: args.limit or None]:
        status = "" if item.status == "current" else f"  [superseded by {item.superseded_by}]"
        print(f"{item.edit.id}  {item.edit.statement}{status}")
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
    store = open_store(settings)
    hits = store.search(args.query, k=args.k, gated=not args.all)
    for hit in hits:
        gate = "" if hit.score >= store.threshold else "  (below gate)"
        print(f"{hit.score:.3f}  {hit.edit.id}  {hit.edit.statement}{gate}")
    if not hits:
        print(f"no edit scores above the relevance gate ({store.threshold:.3f})")
    return 0


def run_export(args, settings) -> int:
    count = open_store(settings).export(Path(args.file), history=args.history)
    print(f"wrote {count} edits to {args.file}")
    return 0


def run_count(args, settings) -> int:
    print(open_store(settings).count(history=args.history))
    return 0


def run_calibrate(args, settings) -> int:
    cases = [case for path in args.datasets for case in load_cases(path, limit=args.limit)]
    if args.tables:
        import random

        from lte.align.data import table_cases

        cases += table_cases(args.tables, random.Random(0))
    if not cases:
        raise InputError("lte edit calibrate: give training DATASET files, --tables N, or both")
    save_in_store = not args.dry_run and not args.save_to
    gate = open_store(settings).calibrate(cases, save=save_in_store)
    if args.save_to and not args.dry_run:
        gate.save(Path(args.save_to))
    print(f"gate {dict(zip(('cosine', 'subject', 'relation'), gate.weights))}, bias {gate.bias}, "
          f"threshold {gate.threshold:.4f}: precision {gate.fit_precision:.3f}, recall {gate.fit_recall:.3f} "
          f"({gate.fit_related} related, {gate.fit_unrelated} unrelated prompts)"
          + ("" if args.dry_run else f"; saved to {args.save_to or 'the store'}"))
    return 0
