"""``gptlab prepare DATASET``: tokenize a dataset into DATA_DIR/DATASET (train.bin, val.bin, meta.json)."""

from __future__ import annotations

import argparse
from typing import Any

from gptlab.data.datasets import DATASETS, prepare_dataset
from gptlab.data.storage import META_FILE, NANOGPT_META_FILE, SPLITS, read_meta, split_path
from gptlab.data.tokenizers import TOKENIZERS
from gptlab.errors import path_argument, refuse_extra


def _earlier_meta(data_dir: str, dataset: str) -> dict[str, Any] | None:
    """The meta.json of the dataset a prepare is about to replace, if one is there and readable."""
    import contextlib
    from pathlib import Path

    with contextlib.suppress(Exception):  # none, or unreadable: nothing to compare with
        return read_meta(Path(data_dir).expanduser() / dataset)
    return None


def _replaced_note(old: dict[str, Any], new: dict[str, Any], old_bins: dict[str, str], new_bins: dict[str, str]) -> str:
    """What a prepare that replaced an earlier dataset of the name changed (it was silent). ``old_bins`` and
    ``new_bins``: the split files' sampled bytes before and after, which must agree for the tokens to be called
    unchanged, as a resume compares them: a records dataset records no text hash, and the same text split into
    other documents hashes the same while its end-of-text tokens move."""

    def what(meta: dict[str, Any]) -> tuple[Any, ...]:  # what a resume compares (the text, not where it was)
        source = meta.get("source") or {}
        return (source.get("sha256"), (meta.get("tokenizer") or {}).get("name"), meta.get("tokens"))

    if what(old)[1:] == what(new)[1:] and old_bins and old_bins == new_bins:
        if what(old)[0] is not None and what(old) == what(new):
            return "note: the same text and tokenizer as the dataset it replaced: its tokens are unchanged"
        nanogpt = (old.get("source") or {}).get("kind") == "nanogpt"
        return "note: the same tokens and tokenizer as the dataset it replaced" + (
            " (nanoGPT's prepare.py output)" if nanogpt else ""
        )
    source = (old.get("source") or {}).get("path") or (old.get("source") or {}).get("kind", "?")
    tokens = (old.get("tokens") or {}).get("train", "?")
    tokenizer = (old.get("tokenizer") or {}).get("name", "?")
    return (
        f"note: replaced the dataset prepared here before (from {source}, {tokens:,} train tokens, {tokenizer} "
        "tokenizer): a run trained on it that is resumed says its data changed"
        if isinstance(tokens, int)
        else f"note: replaced the dataset prepared here before (from {source}, {tokenizer} tokenizer)"
    )


def _cmd_prepare(args: argparse.Namespace, extra: list[str]) -> int:
    refuse_extra("prepare", extra, vars(args))
    from pathlib import Path

    from gptlab.data.storage import bins_sample  # the bytes a resume compares

    earlier = _earlier_meta(args.data_dir, args.dataset)
    earlier_bins = bins_sample(Path(args.data_dir).expanduser() / args.dataset) if earlier is not None else {}
    dataset_dir = prepare_dataset(
        args.dataset,
        args.data_dir,
        args.input,
        tokenizer=args.tokenizer,
        num_proc=args.num_proc,
        max_documents=args.max_documents,
        max_tokens=args.max_tokens,
        text_field=args.text_field,
    )
    meta = read_meta(dataset_dir)
    tokens: dict[str, Any] = meta["tokens"]
    print(
        f"prepared {args.dataset} in {dataset_dir}: {tokens['train']:,} train + {tokens['val']:,} val tokens, "
        f"{meta['tokenizer']['name']} tokenizer, vocab_size {meta['vocab_size']}, {meta['dtype']}"
    )
    source = meta.get("source") or {}
    if source.get("skipped_files"):
        print(
            f"skipped {source['skipped_files']} file{'s' if source['skipped_files'] != 1 else ''} that "
            f"{'are' if source['skipped_files'] != 1 else 'is'} not text (not UTF-8, or with NUL bytes; "
            f"e.g. {', '.join(source['skipped_examples'])})"
        )
    if source.get("records_read_as_text"):
        print(
            f"note: read as text, not as records: {', '.join(source['records_read_as_text'])} (records, a document "
            "each, are read from .jsonl or .parquet files, or a folder of only those)"
        )
    if source.get("skipped_datasets"):
        print(f"skipped prepared datasets inside the input: {', '.join(source['skipped_datasets'])}")
    for split in SPLITS:
        path = split_path(dataset_dir, split)
        print(f"  {path}  {path.stat().st_size / 1e6:.2f} MB")
    print(f"  {dataset_dir / META_FILE}")
    if (dataset_dir / NANOGPT_META_FILE).is_file():  # a char vocabulary's, as nanoGPT's prepare.py writes it
        print(f"  {dataset_dir / NANOGPT_META_FILE}  (nanoGPT's)")
    if earlier is not None:
        print(_replaced_note(earlier, meta, earlier_bins, bins_sample(dataset_dir)))
    return 0


def _datasets_help() -> str:
    width = max(map(len, DATASETS))
    lines = [f"  {name:{width}s}  {spec.help}" for name, spec in DATASETS.items()]
    lines.append(f"  {'NAME':{width}s}  your own text: --input FILE_OR_FOLDER (char tokenizer if NAME ends in _char)")
    return "datasets:\n" + "\n".join(lines)


def register(subparsers: Any) -> None:
    """Add the ``prepare`` subcommand to the ``gptlab`` command's subparsers."""
    parser = subparsers.add_parser(
        "prepare",
        help="tokenize a dataset into DATA_DIR/DATASET/{train,val}.bin and meta.json (char: also meta.pkl)",
        description=(__doc__ or "").replace("``", ""),  # the help shows text, not reST markup
        epilog=_datasets_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("dataset", help="a dataset name (listed below) or a new name for your own --input")
    parser.add_argument(
        "--input",
        type=path_argument,
        metavar="PATH",
        help="a local text file or folder; for openwebtext and fineweb_edu records: .jsonl/.json/.parquet files or a "
        "folder datasets' save_to_disk wrote",
    )
    parser.add_argument(
        "--data_dir", "--data-dir", type=path_argument, default="data", metavar="DIR", help="where datasets live (data)"
    )
    parser.add_argument(
        "--tokenizer",
        choices=sorted(TOKENIZERS),
        help="for your own text (default: char if NAME ends in _char, else gpt2)",
    )
    parser.add_argument(
        "--text_field",
        "--text-field",
        default="text",
        metavar="NAME",
        help="the text field of .jsonl/.parquet records (text)",
    )
    parser.add_argument("--num_proc", "--num-proc", type=int, metavar="N", help="tokenizer processes")
    parser.add_argument("--max_documents", "--max-documents", type=int, metavar="N", help="stop after N documents")
    parser.add_argument("--max_tokens", "--max-tokens", type=int, metavar="N", help="stop after N tokens in all")
    parser.set_defaults(func=_cmd_prepare)
