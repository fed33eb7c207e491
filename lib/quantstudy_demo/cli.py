"""The ``quantstudy-demo`` command: rebuild what the offline demo ships.

    quantstudy-demo data                       # data/demo/: conversations, articles, task items, lexicon
    quantstudy-demo items [--settings S] [--out O]   # data/demo/task_items_chat.jsonl (the chat model's items)
    quantstudy-demo model [--out models/demo-support-lm] [--config demo]   # train the tiny Llama (~35 min)
    quantstudy-demo card [--model models/demo-support-lm] [--render-only]  # measure it, write its card

Exit codes: 0 ok, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quantstudy-demo", description="Rebuild the offline demo: support data, task items, tiny model, card."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("data", help="write the embedded demo data under data/demo/")
    it = sub.add_parser("items", help="write the chat model's task items (data/demo/task_items_chat.jsonl)")
    it.add_argument("--settings", default="params/demo-data/task-items-chat.yaml", help="generator settings YAML")
    it.add_argument("--out", default="data/demo/task_items_chat.jsonl", help="output JSONL")
    mo = sub.add_parser("model", help="train the small demo model")
    mo.add_argument("--out", default="models/demo-support-lm", help="output folder")
    mo.add_argument("--config", default="demo", help="training config name")
    ca = sub.add_parser("card", help="measure the demo model and write its model card")
    ca.add_argument("--model", default="models/demo-support-lm", help="model folder")
    ca.add_argument("--render-only", action="store_true", help="re-render README.md from card_metrics.json")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # Each command imports its module on use: `model` and `card` pull in torch and transformers.
    if args.command == "data":
        from quantstudy_demo.supportgen import write_demo_data  # each command loads only what it runs

        _print_json(write_demo_data())
    elif args.command == "items":
        from quantstudy_demo.chatitems import write_chat_items  # each command loads only what it runs

        _print_json(write_chat_items(args.settings, args.out))
    elif args.command == "model":
        from quantstudy_demo.train import train_demo_model  # each command loads only what it runs

        result = train_demo_model(config_name=args.config, out_dir=args.out)
        if result is not None:
            _print_json(result)
    else:
        from quantstudy_demo.modelcard import write_card  # each command loads only what it runs

        card = write_card(args.model, remeasure=not args.render_only)
        print(f"model card written to {args.model}/README.md ({card['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
