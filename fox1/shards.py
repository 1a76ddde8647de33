"""Prepared token sources on disk: uint32 token shards, document offsets and meta.json, written whole or not at all.

A source DATA/NAME/ holds, per split ("train", "val"; chat sources also "train_mask", "val_mask"), a flat token
stream cut into shard files of SHARD_TOKENS tokens (np.memmap-able), the stream offset where each document starts,
and meta.json (format, tokenizer fingerprint, counts, the identity of the inputs it was made from). A source is
written into a temporary sibling directory that replaces DATA/NAME only when complete, and only if DATA/NAME is a
prepared source itself: a folder of the user's is never replaced. `TokenSplit` reads a split back, checking it.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from tqdm import tqdm

from fox1.files import exclusive

FORMAT = "fox1-token-shards-v1"
TOKEN_DTYPE = np.dtype("<u4")  # uint32, little-endian on disk whatever the machine: ids up to 4G, 4 bytes a token
SHARD_TOKENS = 1 << 27  # 128M tokens = 512 MB per shard file: few files, none near filesystem limits
MASK_DTYPE = np.dtype("u1")  # the loss mask: one byte per token, 1 on the assistant's reply tokens


class DataError(ValueError):
    """Unusable data, state or configuration; the message is one line naming the file or field."""


def inputs_key(paths: list[Path | str], fingerprint: str, **settings) -> str:
    """Identity of a preparation: the tokenizer fingerprint, the format, the settings that change the output, and
    each input's path, size, mtime and a hash of its first and last 64 KB (not all of it: hashing 1 TB would take
    hours), so an edited file is noticed even when its size and mtime were kept."""
    files = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns, _head_and_tail_hash(p)) if isinstance(p, Path)
             else p for p in paths]  # a hub dataset is known by its name only
    blob = json.dumps([FORMAT, fingerprint, files, sorted(settings.items())])
    return hashlib.sha256(blob.encode()).hexdigest()


def _head_and_tail_hash(path: Path, size: int = 1 << 16) -> str:
    with open(path, "rb") as file:
        digest = hashlib.sha256(file.read(size))
        if file.seek(0, os.SEEK_END) > size:
            file.seek(-size, os.SEEK_END)
            digest.update(file.read(size))
    return digest.hexdigest()


def is_prepared(directory: Path, key: str) -> bool:
    try:
        return json.loads((directory / "meta.json").read_text())["inputs_key"] == key
    except (OSError, ValueError, KeyError):
        return False


class ShardWriter:
    """Appends documents to one split: a flat token stream cut into files of shard_tokens tokens (a document may
    continue in the next file) plus the stream offset where each document starts."""

    def __init__(self, directory: Path, split: str, shard_tokens: int):
        self.directory, self.split, self.shard_tokens = directory, split, shard_tokens
        self.shards: list[dict] = []
        self.doc_starts: list[np.ndarray] = []
        self.tokens = 0
        self.file = None

    def write(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        self.doc_starts.append(self.tokens + np.cumsum(lengths) - lengths)
        while len(tokens):
            if self.file is None:
                self.shards.append({"file": f"{self.split}_{len(self.shards):06d}.bin", "tokens": 0})
                self.file = open(self.directory / self.shards[-1]["file"], "wb")
            shard = self.shards[-1]
            take = min(len(tokens), self.shard_tokens - shard["tokens"])
            self.file.write(tokens[:take].tobytes())
            shard["tokens"] += take
            self.tokens += take
            tokens = tokens[take:]
            if shard["tokens"] == self.shard_tokens:
                self.file.close()
                self.file = None

    def close(self) -> dict:
        if self.file is not None:
            self.file.close()
        starts = np.concatenate(self.doc_starts) if self.doc_starts else np.zeros(0, np.int64)
        np.save(self.directory / f"{self.split}_doc_starts.npy", starts)
        return {"tokens": self.tokens, "documents": len(starts), "shards": self.shards,
                "doc_starts": f"{self.split}_doc_starts.npy"}



@contextmanager
def staged_directory(directory: Path) -> Iterator[Path]:
    """A temporary sibling directory to write a source into; it replaces `directory` only when the block ends
    without an error, so readers see the old or the new source, never a half-written one."""
    with exclusive(directory.parent / f".{directory.name}.lock", f"source {directory}"):
        _check_replaceable(directory)
        for debris in directory.parent.glob(f".{directory.name}.tmp-*"):  # left by a killed earlier run
            shutil.rmtree(debris, ignore_errors=True)
        temporary = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.tmp-"))
        temporary.chmod(0o777 & ~_umask())  # mkdtemp makes it 0700; a prepared source is as shared as any output
        try:
            yield temporary
            _replace_directory(temporary, directory)
        finally:
            shutil.rmtree(temporary, ignore_errors=True)


def source_meta(directory: Path, key: str, tokenizer, splits: dict, **extra) -> dict:
    return {"format": FORMAT, "name": directory.name, "inputs_key": key, "tokenizer_fingerprint": tokenizer.fingerprint,
            "vocab_size": tokenizer.vocab_size, "bos_id": tokenizer.bos_id, "eos_id": tokenizer.eos_id, **extra,
            "splits": splits}



def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _check_replaceable(directory: Path) -> None:
    """Refuse to replace a directory that is not a prepared source, or one that holds files a preparation did not
    write (a README the user put there): they would be lost."""
    if not directory.exists():
        return
    try:
        meta = json.loads((directory / "meta.json").read_text())
        ours = {"meta.json"} | {split["doc_starts"] for split in meta["splits"].values()} | {
            shard["file"] for split in meta["splits"].values() for shard in split["shards"]}
        if meta.get("format") != FORMAT:
            raise ValueError
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        raise DataError(f"{directory} exists and is not a prepared source (no {FORMAT} meta.json); "
                        f"choose another --name or --out, or move it away") from None
    foreign = sorted(path.name for path in directory.iterdir() if path.name not in ours)
    if foreign:
        raise DataError(f"{directory} holds {foreign[0]!r}" + (f" and {len(foreign) - 1} more" if len(foreign) > 1
                        else "") + ", which a preparation did not write; move it out before preparing this source "
                        "again")


def _replace_directory(new: Path, target: Path) -> None:
    """Swap a finished directory into place; readers see the old or the new source, never a half-written one."""
    if target.exists():
        old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
        os.replace(target, old / "source")
        os.replace(new, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, target)



class TokenSplit:
    """One split ("train"/"val") of a prepared source: its token stream memory-mapped across shard files."""

    def __init__(self, data_root: Path, name: str, split: str, fingerprint: str | None = None, *,
                 dtype: np.dtype = TOKEN_DTYPE):
        directory = Path(data_root) / name
        try:
            self.meta = json.loads((directory / "meta.json").read_text())
        except FileNotFoundError:
            raise DataError(f"source {name!r} is not prepared: {directory / 'meta.json'} not found "
                            f"(run: python data.py prepare --name {name} ...)") from None
        except ValueError as error:
            raise DataError(f"{directory / 'meta.json'}: corrupt ({error})") from None
        if self.meta.get("format") != FORMAT:
            raise DataError(f"{directory}: format {self.meta.get('format')!r}, expected {FORMAT!r}; prepare it again")
        try:
            if fingerprint is not None and self.meta["tokenizer_fingerprint"] != fingerprint:
                raise DataError(f"{directory} was prepared with tokenizer {self.meta['tokenizer_fingerprint'][:12]}, "
                                f"not {fingerprint[:12]}; prepare it again with this tokenizer")
            info = self.meta["splits"][split]
            self.name, self.split, self.tokens, self.bos_id = name, split, info["tokens"], self.meta["bos_id"]
            shards, doc_starts = info["shards"], directory / info["doc_starts"]
            self.shard_paths = [directory / shard["file"] for shard in shards]
            shard_tokens = [int(shard["tokens"]) for shard in shards]
        except (KeyError, TypeError) as error:
            raise DataError(f"{directory / 'meta.json'}: missing or malformed field {error}; prepare it again") from None
        for path, tokens in zip(self.shard_paths, shard_tokens):
            if not path.is_file() or path.stat().st_size != tokens * dtype.itemsize:
                raise DataError(f"{path}: missing or truncated (expected {tokens:,} tokens); prepare again")
        self.shard_starts = np.cumsum([0] + shard_tokens)
        try:
            self.doc_starts = np.load(doc_starts, mmap_mode="r")
        except (OSError, ValueError, EOFError) as error:
            raise DataError(f"{doc_starts}: unreadable or truncated ({error}); prepare again") from None
        # Each memory map holds a file descriptor: keep the recently used ones, not all of a 3T-token corpus's 23K.
        self.shard = lru_cache(maxsize=64)(lambda index: np.memmap(self.shard_paths[index], dtype, mode="r"))

    def read(self, start: int, stop: int) -> np.ndarray:
        """Tokens [start, stop) of the stream as int64, stitched across shard files."""
        pieces = []
        index = int(np.searchsorted(self.shard_starts, start, side="right")) - 1
        while start < stop:
            offset = start - self.shard_starts[index]
            piece = self.shard(index)[offset:offset + stop - start]
            pieces.append(piece)
            start += len(piece)
            index += 1
        return np.concatenate(pieces).astype(np.int64)



def source_kinds(data_root: Path) -> dict[str, str]:
    """name -> "chat" (conversations with a loss mask) or "text" (documents) of each source under data_root."""
    kinds = {}
    for meta in sorted(Path(data_root).glob("*/meta.json")):
        try:
            kinds[meta.parent.name] = json.loads(meta.read_text()).get("kind", "text")
        except (OSError, ValueError, AttributeError):  # damaged: TokenSplit says so when the stage opens it
            kinds[meta.parent.name] = "text"
    return kinds


# ---------------------------------------------------------------------------------------------------------------------
# Writing a source


def held_out(numbers: np.ndarray, val_fraction: float) -> np.ndarray:
    """Whether document (or conversation) number i goes to val: floor((i + 1) * f) > floor(i * f): the requested
    share (0.4 holds out 2 of every 5), deterministic, independent of how the documents were batched."""
    return np.floor((numbers + 1) * val_fraction) > np.floor(numbers * val_fraction)


def write_text_source(directory: Path, encoded: Iterable[tuple[np.ndarray, np.ndarray, int]], tokenizer, *,
                      key: str, val_fraction: float, shard_tokens: int, total_bytes: int | None, progress: bool,
                      stats) -> None:
    """Write batches of encoded documents (tokens one after another, their lengths, their UTF-8 bytes) as a
    source: train and val splits (`held_out` by document number), meta.json, then swapped into place."""
    start = time.perf_counter()
    with staged_directory(directory) as temporary:
        writers = {split: ShardWriter(temporary, split, shard_tokens) for split in ("train", "val")}
        bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc=f"tokenizing {directory.name}",
                   disable=not progress)
        with bar:
            first_document = 0
            for tokens, lengths, size in encoded:
                is_val = held_out(np.arange(first_document, first_document + len(lengths)), val_fraction)
                token_is_val = np.repeat(is_val, lengths)
                writers["train"].write(tokens[~token_is_val], lengths[~is_val])
                writers["val"].write(tokens[token_is_val], lengths[is_val])
                first_document += len(lengths)
                bar.update(size)
            if total_bytes:  # CRLF -> LF and byte-order marks make the text a little shorter than the files
                bar.update(max(0, total_bytes - bar.n))
        splits = {split: writer.close() for split, writer in writers.items()}
        if first_document == 0:
            raise DataError(f"{directory.name}: the inputs hold no documents (empty or whitespace-only)")
        meta = source_meta(directory, key, tokenizer, splits, val_fraction=val_fraction,
                           bad_lines_skipped=stats.bad_lines, replaced_bytes=stats.replaced_bytes)
        (temporary / "meta.json").write_text(json.dumps(meta, indent=1))
    if progress:
        seconds = time.perf_counter() - start
        total = splits["train"]["tokens"] + splits["val"]["tokens"]
        print(f"{directory.name}: {splits['train']['documents']:,} train / {splits['val']['documents']:,} val "
              f"documents, {splits['train']['tokens']:,} / {splits['val']['tokens']:,} tokens in {seconds:.1f} s "
              f"({total / seconds:,.0f} tokens/s); {stats.replaced_bytes:,} undecodable bytes replaced, "
              f"{stats.bad_lines:,} bad lines skipped -> {directory}")


def write_chat_source(directory: Path, encoded: Iterable[tuple[list[int], list[int], bool]], tokenizer, stats, *,
                      key: str, template: str, total: int | None, progress: bool) -> None:
    """Write encoded conversations (ids, loss mask, is_val) as a chat source: token splits plus parallel uint8
    mask splits ("train_mask", "val_mask"), and meta.json recording the template they were rendered with."""
    with staged_directory(directory) as temporary:
        writers = {split: ShardWriter(temporary, split, SHARD_TOKENS)
                   for split in ("train", "val", "train_mask", "val_mask")}
        with tqdm(total=total, unit="conversation", desc=f"tokenizing {directory.name}", disable=not progress) as bar:
            for ids, mask, is_val in encoded:
                split, length = ("val" if is_val else "train"), np.array([len(ids)])
                writers[split].write(np.array(ids, dtype=TOKEN_DTYPE), length)
                writers[f"{split}_mask"].write(np.array(mask, dtype=MASK_DTYPE), length)
                bar.update(1)
        splits = {split: writer.close() for split, writer in writers.items()}
        if stats.conversations == 0:
            raise DataError(f"{directory.name}: no usable conversations ({stats.malformed:,} malformed; first: "
                            f"{stats.first_malformed})")
        meta = source_meta(directory, key, tokenizer, splits, kind="chat", chat_template=template,
                           conversations=stats.conversations, malformed=stats.malformed,
                           first_malformed=stats.first_malformed)
        (temporary / "meta.json").write_text(json.dumps(meta, indent=1))
    if progress:
        print(f"{directory.name}: {splits['train']['documents']:,} train / {splits['val']['documents']:,} val "
              f"conversations, {splits['train']['tokens']:,} / {splits['val']['tokens']:,} tokens; "
              f"{stats.malformed:,} malformed skipped" + (f" (first: {stats.first_malformed})" if stats.malformed
                                                          else "") + f" -> {directory}")
