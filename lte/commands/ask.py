"""`lte ask`: answer a question with the relevant stored edits in the prompt."""

from __future__ import annotations

from lte.core.models import load_model


def register(commands) -> None:
    parser = commands.add_parser("ask", help="answer a question using the stored edits",
                                 description="Retrieve the edits relevant to QUESTION from the store, answer with "
                                 "them in the prompt, and print the answer and the edits used.")
    parser.add_argument("question")
    parser.add_argument("--k", type=int, default=3, help="most edits put into the prompt (default 3)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="answer length limit (default 64)")
    parser.add_argument("--json", action="store_true", help="print the answer and edits as JSON")
    parser.set_defaults(handler=run)


def run(args, settings) -> int:
    from lte.commands.common import print_json
    from lte.method.editor import LTEConfig, LTEEditor

    # an unmerged LoRA adapter: unrelated questions run on the same weights with it off (one copy in memory)
    loaded = load_model(settings.model, settings.home, merge_adapter=False, **settings.load_options)
    editor = LTEEditor.from_config(settings, loaded, LTEConfig(k=args.k), private_store=False)
    answer = editor.answer(args.question, args.max_new_tokens)
    used = [{"id": h.edit.id, "score": h.score, "statement": h.edit.statement} for h in answer.hits]
    if args.json:
        print_json({"answer": answer.text, "edits": used})
        return 0
    print(answer.text)
    for item in used:
        print(f"  [edit {item['id']} score {item['score']:.3f}] {item['statement']}")
    if not used:
        print("  (no stored edit was relevant)")
    return 0
