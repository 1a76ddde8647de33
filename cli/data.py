"""The command line of data.py, and `prepare`: text, JSONL and Parquet files (or the built-in corpus) -> DATA/NAME/
token shards (fox1/shards.py) that data.py's loaders read. `python data.py ...` runs `main` here.

Every document is written as <bos> ... <eos>; prepare_chat renders conversations through the chat template
(data.encode_chat) into tokens and a loss mask.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

import data
from data import curriculum, encode_chat, packing_stats
from fox1.chat_template import DEFAULT_CHAT_TEMPLATE, check_conversation, resolve_chat_template
from fox1.corpus import (BUILTIN, BUILTIN_CHAT, BUILTIN_CHAT_HELD_OUT, BUILTIN_CHAT_MAX_LINES, BUILTIN_VAL_FRACTION,
                         DOCS_PROSE_RATIO, WRITE_FUNCTION_PROMPT, builtin_conversations, builtin_files, exchange,
                         read_files, split_builtin)
from fox1.documents import ReadStats, expand_inputs, iter_documents, jsonl_lines
from fox1.files import CHUNK_CHARS, InputError, Number, check_numbers, document_chunks, ordered_map
from fox1.shards import (SHARD_TOKENS, DataError, TokenSplit, held_out, inputs_key, is_prepared, write_chat_source,
                         write_text_source)
from tokenizer import Tokenizer, cached_tokenizer, encode_documents

PARALLEL_MIN_BYTES = 32 << 20  # a smaller input is not worth starting worker processes for
NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")


def prepare(inputs: list[str], tokenizer_path: Path, data_root: Path, name: str, *, workers: int | None = None,
            val_fraction: float = 0.01, skip_bad_lines: bool = False, shard_tokens: int = SHARD_TOKENS,
            progress: bool = True, allow_binary: bool = False, text_field: str = "text") -> Path:
    """Tokenize files, globs and hf:NAME datasets (fox1/documents.py) into data_root/name; return that directory.

    Train/val split: document number i (0-based, in input order) goes to val when floor((i + 1) * val_fraction) >
    floor(i * val_fraction): the requested share (0.4 holds out 2 of every 5), deterministic and independent of the
    number of workers.
    """
    _check_source_settings(name, val_fraction)
    paths = expand_inputs(inputs)
    tokenizer = cached_tokenizer(tokenizer_path)
    key = inputs_key(paths, tokenizer.fingerprint, val_fraction=val_fraction, skip_bad_lines=skip_bad_lines,
                     shard_tokens=shard_tokens, **({"text_field": text_field} if text_field != "text" else {}))
    directory = Path(data_root) / name
    if is_prepared(directory, key):
        if progress:
            print(f"{name}: already prepared from the same inputs with this tokenizer, nothing to do")
        return directory
    stats = ReadStats()
    plain = all(isinstance(p, Path) and p.suffix not in (".gz", ".zst", ".parquet") for p in paths)
    total_bytes = sum(p.stat().st_size for p in paths) if plain else None  # else the bar counts text bytes read
    documents = iter_documents(paths, skip_bad_lines=skip_bad_lines, stats=stats, allow_binary=allow_binary,
                               text_field=text_field)
    _build_source(documents, Path(tokenizer_path), directory, key=key, val_fraction=val_fraction, workers=workers,
                  shard_tokens=shard_tokens, total_bytes=total_bytes, progress=progress, read_stats=stats)
    return directory


def _check_source_settings(name: str, val_fraction: float) -> None:
    if not NAME_PATTERN.fullmatch(name):
        raise DataError(f"--name {name!r}: use letters, digits, '.', '_' and '-' only")
    if not 0 <= val_fraction <= 0.5:
        raise DataError(f"val_fraction {val_fraction}: must be between 0 and 0.5")


def prepare_builtin(tokenizer_path: Path, data_root: Path, *, workers: int | None = None,
                    progress: bool = True) -> list[str]:
    """Prepare the BUILTIN sources under data_root (nothing to do when already prepared); return their names."""
    files = builtin_files()
    tokenizer = cached_tokenizer(tokenizer_path)
    key = inputs_key(files, tokenizer.fingerprint, val_fraction=BUILTIN_VAL_FRACTION, docs_prose_ratio=DOCS_PROSE_RATIO)
    if all(is_prepared(Path(data_root) / name, key) for name in BUILTIN):
        return list(BUILTIN)
    for name, group in split_builtin(files, progress).items():
        stats = ReadStats()
        _build_source(read_files(group, stats), Path(tokenizer_path), Path(data_root) / name, key=key,
                      val_fraction=BUILTIN_VAL_FRACTION, workers=workers, shard_tokens=SHARD_TOKENS,
                      total_bytes=sum(path.stat().st_size for path in group), progress=progress, read_stats=stats)
    return list(BUILTIN)


def _build_source(documents: Iterable[str], tokenizer_path: Path, directory: Path, *, key: str,
                  val_fraction: float, workers: int | None, shard_tokens: int, total_bytes: int | None,
                  progress: bool, read_stats: ReadStats) -> None:
    """Encode documents in order with tokenizer.encode_documents and write them as a source. Our tokenizer encodes
    in tiktoken, which releases the GIL: threads, one per core, with nothing to start or copy. A Hugging Face
    tokenizer.json encodes in Python: worker processes, for inputs large enough to pay for starting them."""
    jobs = ((str(tokenizer_path), batch) for batch in document_chunks(documents, CHUNK_CHARS))
    threads = isinstance(cached_tokenizer(tokenizer_path), Tokenizer)
    if workers is None:
        small = not threads and total_bytes is not None and total_bytes < PARALLEL_MIN_BYTES
        workers = 1 if small else os.cpu_count() or 1
    encoded = ordered_map(encode_documents, jobs, workers, threads=threads)
    try:
        write_text_source(directory, encoded, cached_tokenizer(tokenizer_path), key=key, val_fraction=val_fraction,
                          shard_tokens=shard_tokens, total_bytes=total_bytes, progress=progress, stats=read_stats)
    finally:
        encoded.close()  # stops the pool early on an error


@dataclass
class ChatStats:
    """Counters of a chat preparation."""

    conversations: int = 0
    malformed: int = 0  # skipped: bad JSON, no assistant turn, unknown role, non-string content, template refusal
    first_malformed: str | None = None  # "file:line: what is wrong"


def prepare_builtin_chat(tokenizer_path: Path, data_root: Path, *, progress: bool = True) -> str:
    """Prepare BUILTIN_CHAT under data_root with our chat template (nothing to do when done); return its name."""
    tokenizer = cached_tokenizer(tokenizer_path)
    key = inputs_key(builtin_files(), tokenizer.fingerprint, kind="chat", content="text", template=DEFAULT_CHAT_TEMPLATE,
                      held_out=BUILTIN_CHAT_HELD_OUT, max_lines=BUILTIN_CHAT_MAX_LINES,
                      prompt=WRITE_FUNCTION_PROMPT)
    directory = Path(data_root) / BUILTIN_CHAT
    if not is_prepared(directory, key):
        splits = builtin_conversations()
        records = ((f"{BUILTIN_CHAT} {split} #{i}", {"messages": messages}, split == "val")
                   for split, conversations in splits.items() for i, messages in enumerate(conversations))
        _build_chat_source(records, tokenizer, DEFAULT_CHAT_TEMPLATE, directory, key=key, strict=True,
                           total=sum(map(len, splits.values())), progress=progress)
    return BUILTIN_CHAT


def prepare_chat(inputs: list[str], tokenizer_path: Path, data_root: Path, name: str, *,
                 template_path: Path | None = None, val_fraction: float = 0.02, strict: bool = False,
                 progress: bool = True) -> Path:
    """Chat JSONL files (one {"messages": [{"role", "content"}, ...]} or {"prompt", "response"} per line, .gz
    allowed) -> data_root/name: the rendered conversations as a token source plus a parallel uint8 loss-mask split
    ("train_mask", "val_mask"). Malformed lines are skipped and counted (the first one is named), or refused when
    strict. template_path: a model folder holding tokenizer_config.json, or a Jinja file (default: the tokenizer's
    folder's template if it has one, else DEFAULT_CHAT_TEMPLATE)."""
    _check_source_settings(name, val_fraction)
    paths = expand_inputs(inputs)
    tokenizer = cached_tokenizer(tokenizer_path)
    template = resolve_chat_template(template_path, tokenizer_path)
    key = inputs_key(paths, tokenizer.fingerprint, kind="chat", content="text", template=template, val_fraction=val_fraction, strict=strict)
    directory = Path(data_root) / name
    if is_prepared(directory, key):
        if progress:
            print(f"{name}: already prepared from the same inputs with this tokenizer and template, nothing to do")
        return directory
    records = ((where, line, bool(held_out(np.array(n), val_fraction)))
               for n, (where, line) in enumerate(jsonl_lines(paths)))
    _build_chat_source(records, tokenizer, template, directory, key=key, strict=strict, total=None,
                       progress=progress)
    return directory


def _encode_records(records: Iterable[tuple[str, object, bool]], tokenizer: Tokenizer, template: str,
                    strict: bool, stats: ChatStats) -> Iterator[tuple[list[int], list[int], bool]]:
    """(where, JSON line or parsed record, is_val) -> (ids, mask, is_val) of each well-formed conversation."""
    for where, record, is_val in records:
        try:
            record = json.loads(record) if isinstance(record, str) else record
            if isinstance(record, dict) and "messages" in record:
                messages = record["messages"]
            elif isinstance(record, dict) and {"prompt", "response"} <= record.keys():
                messages = exchange(record["prompt"], record["response"])
            else:
                raise ValueError('expected {"messages": [...]} or {"prompt": ..., "response": ...}')
            check_conversation(messages)
            ids, mask = encode_chat(tokenizer, messages, template)
        except ValueError as error:  # bad JSON, a malformed conversation, or one the template refuses
            if strict:
                raise DataError(f"{where}: {error}") from None
            stats.malformed += 1
            stats.first_malformed = stats.first_malformed or f"{where}: {error}"
            continue
        stats.conversations += 1
        yield ids, mask, is_val


def _build_chat_source(records: Iterable[tuple[str, object, bool]], tokenizer: Tokenizer, template: str,
                       directory: Path, *, key: str, strict: bool, total: int | None, progress: bool) -> None:
    stats = ChatStats()
    encoded = _encode_records(records, tokenizer, template, strict, stats)
    write_chat_source(directory, encoded, tokenizer, stats, key=key, template=template, total=total,
                      progress=progress)


def print_stats(data_root: Path, context_len: int, total_tokens: int | None, sources: list[str] | None) -> None:
    data_root = Path(data_root)
    if sources is None:
        sources = sorted(p.parent.name for p in data_root.glob("*/meta.json"))
        if not sources:
            raise DataError(f"{data_root}: no prepared sources (no */meta.json)")
    splits = {name: {split: TokenSplit(data_root, name, split) for split in ("train", "val")} for name in sources}
    print(f"{'source':<16}{'train docs':>12}{'train tokens':>15}{'val docs':>10}{'val tokens':>13}")
    for name, pair in splits.items():
        print(f"{name:<16}{len(pair['train'].doc_starts):>12,}{pair['train'].tokens:>15,}"
              f"{len(pair['val'].doc_starts):>10,}{pair['val'].tokens:>13,}")
    total = total_tokens or sum(pair["train"].tokens for pair in splits.values())
    for stage in curriculum(context_len, total, sources):
        print(f"\nstage {stage.number}: seq_len {stage.seq_len:,}, {stage.tokens:,} tokens")
        print(f"  {'source':<16}{'weight':>7}{'windows':>10}{'dropped':>9}{'docs cut':>10}{'docs/window':>12}"
              f"{'epochs':>8}")
        for name, weight in stage.mixture.items():
            p = packing_stats(splits[name]["train"], stage.seq_len)
            epochs = weight * stage.tokens / max(p.windows * stage.seq_len, 1)
            print(f"  {name:<16}{weight:>7.2f}{p.windows:>10,}{p.tokens_dropped:>9,}"
                  f"{p.documents_cut / max(p.documents, 1):>9.1%} {p.docs_per_window:>11.2f}{epochs:>8.2f}")


def _add_source_arguments(p: argparse.ArgumentParser, input_help: str, name: str, val_fraction: float) -> None:
    """The arguments `prepare` and `prepare-chat` share: inputs, tokenizer, where the source goes, its split."""
    p.add_argument("--input", nargs="+", required=True, help=input_help)
    p.add_argument("--tokenizer", type=Path, required=True, help="tokenizer file (python tokenizer.py train ...)")
    p.add_argument("--out", type=Path, required=True, help="data root; the source goes to OUT/NAME")
    p.add_argument("--name", default=name, help=f"source name, as the curriculum mixture names it (default: {name})")
    p.add_argument("--val-fraction", type=float, default=val_fraction,
                   help=f"share of documents (conversations) held out (default: {val_fraction})")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=data.__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    workers_help = ("encoding threads (our tokenizer) or processes (a tokenizer.json) (default: all CPU cores; one "
                    "process for a tokenizer.json below 32 MB of input)")
    p = commands.add_parser("prepare", help="tokenize text/JSONL files into token shards")
    _add_source_arguments(p, "files, globs or hf:NAME[:CONFIG][@SPLIT] datasets: .txt (documents separated by 2+ "
                          "blank lines), .jsonl/.json, .parquet, any line format as .gz or .zst", name="corpus",
                          val_fraction=0.01)
    p.add_argument("--text-field", default="text", help="the JSONL field / Parquet column holding the text "
                   "(default: %(default)s; The Stack's is content)")
    p.add_argument("--workers", type=int, default=None, help=workers_help)
    p.add_argument("--skip-bad-lines", action="store_true", help="skip and count malformed JSONL lines")
    p.add_argument("--allow-binary", action="store_true",
                   help="accept files with more than a few percent of undecodable bytes (replaced by U+FFFD)")
    b = commands.add_parser("prepare-builtin", help="prepare the built-in standard-library sources " + str(BUILTIN))
    b.add_argument("--tokenizer", type=Path, required=True, help="tokenizer file")
    b.add_argument("--out", type=Path, required=True, help="data root")
    b.add_argument("--workers", type=int, default=None, help=workers_help)
    c = commands.add_parser("prepare-chat", help="render chat JSONL through a chat template into tokens + loss mask")
    _add_source_arguments(c, 'files or globs: .jsonl (.gz) with {"messages": [{"role": "system"|"user"|"assistant", '
                          '"content": ...}]} or {"prompt": ..., "response": ...} per line', name="chat", val_fraction=0.02)
    c.add_argument("--chat-template", type=Path, help="a model folder (its tokenizer_config.json) or a Jinja file "
                   "(default: the tokenizer folder's template, else fox1's Gemma-style turns)")
    c.add_argument("--strict", action="store_true", help="stop at the first malformed line instead of skipping it")
    s = commands.add_parser("stats", help="token/document counts and per-stage packing statistics")
    s.add_argument("--data", type=Path, required=True, help="data root")
    s.add_argument("--context-len", type=int, default=1024, help="model context; stages use /4, /2, /1 of it")
    s.add_argument("--total-tokens", type=int, default=None, help="curriculum budget (default: one pass of the data)")
    s.add_argument("--sources", nargs="+", default=None, help="sources in quality order (default: all prepared)")
    args = parser.parse_args(argv)
    check_numbers(parser, args, FLAG_RULES)
    return args


FLAG_RULES = {"val_fraction": Number(0, 0.5), "workers": Number(1), "context_len": Number(4),
              "total_tokens": Number(1)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.command == "prepare":
            prepare(args.input, args.tokenizer, args.out, args.name, workers=args.workers,
                    val_fraction=args.val_fraction, skip_bad_lines=args.skip_bad_lines,
                    allow_binary=args.allow_binary, text_field=args.text_field)
        elif args.command == "prepare-chat":
            prepare_chat(args.input, args.tokenizer, args.out, args.name, template_path=args.chat_template,
                         val_fraction=args.val_fraction, strict=args.strict)
        elif args.command == "prepare-builtin":
            names = prepare_builtin(args.tokenizer, args.out, workers=args.workers)
            print(f"built-in sources ready under {args.out}: {', '.join(names)}")
        else:
            print_stats(args.data, args.context_len, args.total_tokens, args.sources)
    except (InputError, DataError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a source is swapped into place only when complete: nothing half-written is left
        print("\ninterrupted: nothing was written; prepared sources are as they were", file=sys.stderr)
        return 130
    return 0
