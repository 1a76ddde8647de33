"""The command line of tokenizer.py: `python tokenizer.py train` and `python tokenizer.py encode`."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from fox1.documents import MAX_REPLACED_FRACTION, ReadStats, expand_inputs, iter_documents
from fox1.files import InputError, Number, check_numbers
import tokenizer
from tokenizer import FIRST_MERGE_ID, Tokenizer, load_tokenizer


def _train_command(args: argparse.Namespace) -> None:
    start = time.time()
    if Path(args.out).exists() and not args.force:  # data prepared with the old file would silently stop matching
        raise InputError(f"{args.out} already exists: pass --force to replace it (data prepared with it must then "
                         f"be prepared again) or choose another --out")
    stats = ReadStats()
    paths = expand_inputs(args.input)
    documents = iter_documents(paths, skip_bad_lines=args.skip_bad_lines, stats=stats, allow_binary=args.allow_binary,
                               text_field=args.text_field)
    tokenizer = Tokenizer.train(documents, args.vocab_size, workers=args.workers, progress=not args.quiet)
    tokenizer.save(args.out)
    print(
        f"trained {tokenizer.vocab_size} tokens on {stats.documents} documents from {len(paths)} files "
        f"({stats.bad_lines} bad lines skipped, {stats.replaced_bytes} undecodable bytes replaced) "
        f"in {time.time() - start:.1f}s -> {args.out} (fingerprint {tokenizer.fingerprint[:16]})"
    )


def _encode_command(args: argparse.Namespace) -> None:
    tokenizer = load_tokenizer(args.tokenizer)
    ids = tokenizer.encode(args.text, allow_special=args.allow_special)
    print(" ".join(map(str, ids)))
    print(" ".join(json.dumps(tokenizer.decode_bytes([i]).decode("utf-8", "replace"), ensure_ascii=False)
                   for i in ids))
    print(f"{len(ids)} tokens, {len(args.text.encode('utf-8')) / max(len(ids), 1):.2f} bytes/token")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=tokenizer.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train a tokenizer on text / JSONL files")
    train.add_argument("--input", nargs="+", required=True, help="files or globs (** recursive) or hf:NAME datasets: "
                       "text, .jsonl/.json, .parquet, any line format as .gz or .zst")
    train.add_argument("--text-field", default="text", help="the JSONL field / Parquet column holding the text "
                       "(default: %(default)s)")
    train.add_argument("--vocab-size", type=int, default=256000, help="total tokens incl. 6 specials (256000)")
    train.add_argument("--out", required=True, help="tokenizer file to write")
    train.add_argument("--workers", type=int, default=None, help="counting processes (default: all cores)")
    train.add_argument("--skip-bad-lines", action="store_true", help="skip (and count) malformed JSONL lines")
    train.add_argument("--allow-binary", action="store_true",
                       help=f"read files with over {MAX_REPLACED_FRACTION * 100:.0f}%% undecodable bytes (refused by default)")
    train.add_argument("--force", action="store_true", help="replace an existing --out file")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    encode = commands.add_parser("encode", help="print the ids and tokens of a text")
    encode.add_argument("--tokenizer", required=True,
                        help="tokenizer file written by 'train', a tokenizer.json or a model folder")
    encode.add_argument("--allow-special", action="store_true", help="treat '<eos>' etc. as special tokens")
    encode.add_argument("text")
    args = parser.parse_args(argv)
    check_numbers(parser, args, FLAG_RULES)
    try:
        (_train_command if args.command == "train" else _encode_command)(args)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: no tokenizer file was written", file=sys.stderr)
        return 130
    return 0


FLAG_RULES = {"vocab_size": Number(FIRST_MERGE_ID), "workers": Number(1)}
