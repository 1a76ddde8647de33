"""Tests for data.py: prepare (shards, split, no-op re-runs, bad input), curriculum, packing, sharded resumable loading.

The corpora are generated here; the tokenizer is a small one trained on them (vocab 360, 1 worker).
"""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from cli import data as data_cli, tokenizer as tokenizer_cli
from cli.data import prepare
import data
from data import BUILTIN, IGNORE_INDEX, DataError, Loader, Stage, TokenSplit, curriculum, eval_batches, pack
from fox1 import corpus as builtin_corpus
from fox1.files import InputError
from tokenizer import Tokenizer, load_tokenizer

WORDS = ("the fox jumps over a lazy dog while seven quick zebras vex bold wizards near old rivers and "
         "def return class import if else for in with yield lambda None True False").split()


def make_documents(count: int, seed: int, tag: str) -> list[str]:
    """Distinct documents (each names its number) of 3 to 60 words, some with line breaks."""
    rng = random.Random(seed)
    documents = []
    for number in range(count):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 60))]
        lines = [" ".join(words[i:i + 9]) for i in range(0, len(words), 9)]
        documents.append(f"{tag} {number}: " + "\n".join(lines))
    return documents


def write_jsonl(path: Path, documents: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in documents), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tok") / "tok.txt"
    corpus = make_documents(300, seed=0, tag="doc") + make_documents(100, seed=1, tag="other")
    Tokenizer.train(corpus, vocab_size=360, workers=1, progress=False).save(path)
    return path


@pytest.fixture(scope="module")
def tokenizer(tokenizer_path) -> Tokenizer:
    return Tokenizer.load(tokenizer_path)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tokenizer_path) -> tuple[Path, list[str]]:
    """data root with source 'src': 80 documents, 10% val, shards of 97 tokens (windows straddle shard files)."""
    root = tmp_path_factory.mktemp("data")
    documents = make_documents(80, seed=2, tag="doc")
    prepare([str(write_jsonl(root / "in.jsonl", documents))], tokenizer_path, root, "src", workers=1,
            val_fraction=0.1, shard_tokens=97, progress=False)
    return root, documents


def raw_stream(root: Path, name: str, split: str) -> np.ndarray:
    """The split's token stream read straight from the shard files listed in meta.json."""
    meta = json.loads((root / name / "meta.json").read_text())
    files = [root / name / shard["file"] for shard in meta["splits"][split]["shards"]]
    return np.concatenate([np.fromfile(f, dtype="<u4") for f in files]).astype(np.int64)


def corpus_windows(root: Path, name: str, seq_len: int, split: str = "train", offset: int = 0) -> list[tuple]:
    """The windows of seq_len+1 tokens, one every seq_len tokens from `offset`, at offset 0's window count."""
    stream = raw_stream(root, name, split)
    count = (len(stream) - 1) // seq_len
    return [tuple(stream[offset + i * seq_len:offset + i * seq_len + seq_len + 1]) for i in range(count)]


def batch_windows(batch, bos_id: int) -> list[tuple]:
    """Rebuild each row's seq_len+1 token window from a Batch (masked targets are <bos> tokens)."""
    targets = batch.targets.numpy().copy()
    targets[targets == IGNORE_INDEX] = bos_id
    return [tuple([int(row_in[0]), *row_t]) for row_in, row_t in zip(batch.inputs.numpy(), targets)]


def take(loader, steps: int) -> list:
    iterator = iter(loader)
    return [next(iterator) for _ in range(steps)]


# ---------------------------------------------------------------------------------------------------------------------
# prepare


def test_prepare_writes_documents_as_bos_tokens_eos_in_shards(corpus, tokenizer):
    root, documents = corpus
    meta = json.loads((root / "src" / "meta.json").read_text())
    val = [d for i, d in enumerate(documents) if i % 10 == 9]  # val_fraction 0.1: every 10th document
    train = [d for i, d in enumerate(documents) if i % 10 != 9]
    for split, docs in (("train", train), ("val", val)):
        expected = [[tokenizer.bos_id, *tokenizer.encode(d), tokenizer.eos_id] for d in docs]
        info = meta["splits"][split]
        assert info["documents"] == len(docs) and info["tokens"] == sum(map(len, expected))
        assert raw_stream(root, "src", split).tolist() == [t for doc in expected for t in doc]
        starts = np.cumsum([0] + [len(doc) for doc in expected])[:-1]
        assert np.load(root / "src" / info["doc_starts"]).tolist() == starts.tolist()
        sizes = [shard["tokens"] for shard in info["shards"]]
        assert all(size == 97 for size in sizes[:-1]) and 0 < sizes[-1] <= 97
    assert meta["tokenizer_fingerprint"] == tokenizer.fingerprint
    assert len(meta["splits"]["train"]["shards"]) > 10


def test_reads_across_shard_boundaries_lose_and_duplicate_nothing(corpus):
    root, _ = corpus
    split, stream = TokenSplit(root, "src", "train"), raw_stream(root, "src", "train")
    for boundary in range(97, split.tokens, 97):
        for start, stop in ((boundary - 1, boundary + 1), (boundary - 30, boundary + 200), (boundary, boundary + 97)):
            stop = min(stop, split.tokens)
            assert split.read(start, stop).tolist() == stream[start:stop].tolist()


@pytest.mark.parametrize("kind", ["ours (threads)", "tokenizer.json (processes)"])
def test_two_workers_write_the_same_shards_as_one(tmp_path, tokenizer_path, tokenizer, corpus, kind):
    root, documents = corpus
    if kind.startswith("ours"):
        path = tokenizer_path
    else:  # the same vocabulary as a tokenizer.json we do not recognise as ours: Python BPE, worker processes
        tokenizer.save_pretrained(tmp_path / "hf")
        spec = json.loads((tmp_path / "hf" / "tokenizer.json").read_text())
        spec["normalizer"] = {"type": "NFC"}
        (tmp_path / "hf" / "tokenizer.json").write_text(json.dumps(spec))
        path = tmp_path / "hf" / "tokenizer.json"
        assert not isinstance(load_tokenizer(path), Tokenizer)
    for workers in (1, 2):
        prepare([str(write_jsonl(tmp_path / "in.jsonl", documents))], path, tmp_path / f"x{workers}", "src",
                workers=workers, val_fraction=0.1, shard_tokens=97, progress=False)
    for split in ("train", "val"):
        assert raw_stream(tmp_path / "x2", "src", split).tolist() == raw_stream(root, "src", split).tolist()
        assert raw_stream(tmp_path / "x1", "src", split).tolist() == raw_stream(root, "src", split).tolist()


def test_reprepare_is_a_noop_until_inputs_or_tokenizer_change(tmp_path, tokenizer_path):
    source = write_jsonl(tmp_path / "in.jsonl", make_documents(30, seed=3, tag="doc"))
    directory = prepare([str(source)], tokenizer_path, tmp_path / "out", "s", workers=1, progress=False)
    before = {p.name: p.stat().st_mtime_ns for p in directory.iterdir()}
    time.sleep(0.01)
    prepare([str(source)], tokenizer_path, tmp_path / "out", "s", workers=1, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in directory.iterdir()} == before  # nothing rewritten

    write_jsonl(source, make_documents(31, seed=3, tag="doc"))  # changed input: prepared again
    prepare([str(source)], tokenizer_path, tmp_path / "out", "s", workers=1, progress=False)
    assert json.loads((directory / "meta.json").read_text())["splits"]["train"]["documents"] == 31
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temporary leftovers

    other_path = tmp_path / "other.txt"
    Tokenizer.train(make_documents(200, seed=9, tag="x"), vocab_size=300, workers=1, progress=False).save(other_path)
    old_fingerprint = Tokenizer.load(tokenizer_path).fingerprint
    prepare([str(source)], other_path, tmp_path / "out", "s", workers=1, progress=False)
    stage = Stage(1, 8, 0, {"s": 1.0})
    with pytest.raises(DataError, match="prepared with tokenizer"):
        Loader(tmp_path / "out", stage, 2, fingerprint=old_fingerprint)
    Loader(tmp_path / "out", stage, 2, fingerprint=Tokenizer.load(other_path).fingerprint)


# ---------------------------------------------------------------------------------------------------------------------
# bad input


def test_malformed_jsonl_names_file_and_line_or_is_skipped_and_counted(tmp_path, tokenizer_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": broken\n{"text": "also fine"}\n')
    with pytest.raises(InputError, match=rf"{bad.name}:2:"):
        prepare([str(bad)], tokenizer_path, tmp_path, "s", workers=1, progress=False)
    directory = prepare([str(bad)], tokenizer_path, tmp_path, "s", workers=1, skip_bad_lines=True, progress=False)
    meta = json.loads((directory / "meta.json").read_text())
    assert meta["bad_lines_skipped"] == 1 and meta["splits"]["train"]["documents"] == 2


def test_undecodable_bytes_are_replaced_and_counted(tmp_path, tokenizer_path):
    text = tmp_path / "latin1.txt"
    # 2 Latin-1 bytes in 200: a stray few are replaced and counted; a file of mostly such bytes is refused
    text.write_bytes(b"caf\xe9 and na\xefve " + b"plain ascii text " * 10 + b"\n\n\nsecond document\n")
    meta = json.loads((prepare([str(text)], tokenizer_path, tmp_path, "s", workers=1, progress=False)
                       / "meta.json").read_text())
    assert meta["replaced_bytes"] == 2 and meta["splits"]["train"]["documents"] == 2


def copied_source(root: Path, copy: Path) -> Path:
    """A copy of the prepared source root/src under copy/src, to damage."""
    shutil.copytree(root / "src", copy / "src")
    return copy


def test_missing_or_empty_input_and_truncated_shard_are_clear_errors(tmp_path, tokenizer_path, corpus):
    with pytest.raises(InputError, match="no such file"):
        prepare([str(tmp_path / "missing.txt")], tokenizer_path, tmp_path, "s", progress=False)
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(DataError, match="no documents"):
        prepare([str(tmp_path / "empty.txt")], tokenizer_path, tmp_path, "s", workers=1, progress=False)
    with pytest.raises(DataError, match="not prepared"):
        TokenSplit(tmp_path, "nothing", "train")
    copy = copied_source(corpus[0], tmp_path / "copy")
    shard = copy / "src" / "train_000003.bin"
    shard.write_bytes(shard.read_bytes()[:-4])
    with pytest.raises(DataError, match="train_000003.bin: missing or truncated"):
        TokenSplit(copy, "src", "train")


def test_cli_reports_one_line_error_and_exit_status_1(tmp_path, tokenizer_path):
    result = subprocess.run([sys.executable, "data.py", "prepare", "--input", str(tmp_path / "nope.jsonl"),
                             "--tokenizer", str(tokenizer_path), "--out", str(tmp_path)],
                            cwd=Path(data.__file__).parent, capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1 and "nope.jsonl" in result.stderr


def test_cli_prepare_then_stats(tmp_path, tokenizer_path, capsys):
    source = write_jsonl(tmp_path / "in.jsonl", make_documents(50, seed=4, tag="doc"))
    assert data_cli.main(["prepare", "--input", str(source), "--tokenizer", str(tokenizer_path), "--out", str(tmp_path),
                      "--name", "web", "--workers", "1", "--val-fraction", "0.1"]) == 0
    assert "web: 45 train / 5 val documents" in capsys.readouterr().out
    assert data_cli.main(["stats", "--data", str(tmp_path), "--context-len", "64"]) == 0
    printed = capsys.readouterr().out
    assert "stage 1: seq_len 16" in printed and "stage 3: seq_len 64" in printed and "web" in printed


# ---------------------------------------------------------------------------------------------------------------------
# curriculum


def test_curriculum_stages_lengths_budgets_and_mixtures():
    stages = curriculum(8192, 3_000_000, ["web"])
    assert [s.seq_len for s in stages] == [2048, 4096, 8192]
    assert [s.number for s in stages] == [1, 2, 3] and sum(s.tokens for s in stages) == 3_000_000
    assert all(s.mixture == {"web": 1.0} for s in stages)
    assert [s.seq_len for s in curriculum(1024, 10, list(BUILTIN))] == [256, 512, 1024]

    builtin = curriculum(1024, 10**6, list(BUILTIN))
    docs = [s.mixture["stdlib-docs"] for s in builtin]
    assert docs == sorted(docs) and docs[0] < docs[-1]  # the mixture moves to the better-documented source
    assert all(abs(sum(s.mixture.values()) - 1) < 1e-9 for s in builtin)

    two = curriculum(1024, 10**6, ["web", "books"])
    assert [round(s.mixture["books"] / s.mixture["web"], 6) for s in two] == [1, 2, 4]
    with pytest.raises(DataError):
        curriculum(1030, 10, ["web"])
    with pytest.raises(DataError):
        curriculum(1024, 10, ["web", "web"])


def test_loader_names_a_source_that_is_not_prepared(corpus):
    root, _ = corpus
    with pytest.raises(DataError, match="'books' is not prepared"):
        Loader(root, Stage(1, 16, 0, {"src": 0.5, "books": 0.5}), 2)


# ---------------------------------------------------------------------------------------------------------------------
# packing and loading


def test_pack_positions_restart_at_documents_and_targets_never_cross_them():
    bos, eos = 2, 1
    batch = pack(np.array([[7, 8, eos, bos, 9, 10, eos, bos, 11]]), bos)
    assert batch.inputs.tolist() == [[7, 8, eos, bos, 9, 10, eos, bos]]
    assert batch.targets.tolist() == [[8, eos, IGNORE_INDEX, 9, 10, eos, IGNORE_INDEX, 11]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 0, 1, 2, 3, 0]]
    assert batch.doc_ids.tolist() == [[0, 0, 0, 1, 1, 1, 1, 2]]
    starts_with_bos = pack(np.array([[bos, 5, eos, bos, 6]]), bos)
    assert starts_with_bos.doc_ids.tolist() == [[0, 0, 0, 1]] and starts_with_bos.position_ids.tolist() == [[0, 1, 2, 0]]


def test_loader_batches_are_consistent_packings(corpus, tokenizer):
    root, _ = corpus
    for batch in take(Loader(root, Stage(1, 16, 0, {"src": 1.0}), 4), 5):
        inputs, targets = batch.inputs.numpy(), batch.targets.numpy()
        positions, doc_ids = batch.position_ids.numpy(), batch.doc_ids.numpy()
        assert inputs.shape == targets.shape == positions.shape == doc_ids.shape == (4, 16)
        assert (inputs[:, 1:] == np.where(targets[:, :-1] == IGNORE_INDEX, tokenizer.bos_id, targets[:, :-1])).all()
        is_start = inputs[:, 1:] == tokenizer.bos_id
        assert (positions[:, 1:] == np.where(is_start, 0, positions[:, :-1] + 1)).all()
        assert (doc_ids[:, 1:] == doc_ids[:, :-1] + is_start).all() and (doc_ids[:, 0] == 0).all()


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_every_window_appears_exactly_once_per_epoch_across_ranks(corpus, tokenizer, world_size):
    root, _ = corpus
    stage, batch_size = Stage(1, 16, 0, {"src": 1.0}), 2
    expected = corpus_windows(root, "src", 16)
    steps = -(-len(expected) // (world_size * batch_size))
    per_rank = [take(Loader(root, stage, batch_size, rank=r, world_size=world_size, seed=5), steps)
                for r in range(world_size)]
    slots = [window for step in range(steps) for rank in range(world_size)  # global slot order
             for window in batch_windows(per_rank[rank][step], tokenizer.bos_id)]
    grids = [corpus_windows(root, "src", 16, offset=offset) for offset in range(16)]
    grids = [grid for grid in grids if len(grid[-1]) == 17]  # offsets that fit before the end of the stream
    assert Counter(slots[:len(expected)]) in [Counter(grid) for grid in grids]
    assert slots[:len(expected)] not in grids  # shuffled
    assert len(set(slots[len(expected):])) == len(slots) - len(expected)  # the next epoch has begun, no repeats


def test_mixture_proportions_follow_weights(tmp_path, tokenizer_path, tokenizer):
    for name, seed in (("a", 10), ("b", 11)):
        source = write_jsonl(tmp_path / f"{name}.jsonl", make_documents(40, seed=seed, tag=name))
        prepare([str(source)], tokenizer_path, tmp_path, name, workers=1, val_fraction=0.1, progress=False)
    owner = {w: name for name in ("a", "b") for offset in range(8) for w in corpus_windows(tmp_path, name, 8, offset=offset)}
    batches = take(Loader(tmp_path, Stage(2, 8, 0, {"a": 0.25, "b": 0.75}), 50, seed=1), 40)
    counts = Counter(owner[w] for batch in batches for w in batch_windows(batch, tokenizer.bos_id))
    # 2000 draws at p = 0.25: standard deviation 0.0097, so 0.04 is a 4-sigma band
    assert abs(counts["a"] / 2000 - 0.25) < 0.04 and counts["a"] + counts["b"] == 2000


def advanced(loader: Loader, steps: int):
    """The loader's running iterator after `steps` batches, and the loader's state at that point."""
    iterator = iter(loader)
    for _ in range(steps):
        next(iterator)
    return iterator, loader.state_dict()


def test_exact_resume_mid_epoch(corpus):
    root, _ = corpus
    stage = Stage(1, 16, 0, {"src": 1.0})
    loader = Loader(root, stage, 3, seed=7)
    iterator, state = advanced(loader, 5)
    state = json.loads(json.dumps(state))  # plain data: survives a checkpoint round trip
    rest = [next(iterator) for _ in range(12)]  # crosses the end of the first epoch (~17 batches)

    resumed = Loader(root, stage, 3, seed=7)
    resumed.load_state_dict(state)
    again = take(resumed, 12)
    assert all((a.inputs == b.inputs).all() and (a.targets == b.targets).all() for a, b in zip(rest, again))

    loader.load_state_dict(state)  # reloading a live loader rewinds it
    assert (next(iter(loader)).inputs == rest[0].inputs).all()


def test_resume_with_another_world_size_continues_the_global_stream(corpus):
    root, _ = corpus
    stage = Stage(1, 16, 0, {"src": 1.0})
    iterator, state = advanced(Loader(root, stage, 4, seed=3), 3)
    expected = [next(iterator) for _ in range(4)]
    halves = []
    for rank in range(2):
        loader = Loader(root, stage, 2, rank=rank, world_size=2, seed=3)
        loader.load_state_dict(state)
        halves.append(take(loader, 4))
    for step in range(4):
        combined = np.concatenate([halves[0][step].inputs.numpy(), halves[1][step].inputs.numpy()])
        assert (combined == expected[step].inputs.numpy()).all()


def test_resume_into_another_stage_or_seed_is_refused(corpus):
    root, _ = corpus
    state = Loader(root, Stage(1, 16, 0, {"src": 1.0}), 2).state_dict()
    with pytest.raises(DataError, match="stage"):
        Loader(root, Stage(2, 16, 0, {"src": 1.0}), 2).load_state_dict(state)
    with pytest.raises(DataError, match="seed"):
        Loader(root, Stage(1, 16, 0, {"src": 1.0}), 2, seed=1).load_state_dict(state)


def test_eval_batches_are_deterministic_disjoint_across_ranks_and_from_val(corpus, tokenizer):
    root, _ = corpus
    stage = Stage(1, 8, 0, {"src": 1.0})
    val_windows = set(corpus_windows(root, "src", 8, split="val"))
    ranks = [eval_batches(root, stage, 2, rank=r, world_size=2, max_batches=3) for r in range(2)]
    again = eval_batches(root, stage, 2, rank=0, world_size=2, max_batches=3)
    assert len(ranks[0]) == len(ranks[1]) == 3
    assert all((a.inputs == b.inputs).all() for a, b in zip(ranks[0], again))
    seen = [[w for b in batches for w in batch_windows(b, tokenizer.bos_id)] for batches in ranks]
    assert set(seen[0]).isdisjoint(seen[1]) and set(seen[0] + seen[1]) <= val_windows
    with pytest.raises(DataError, match="val"):
        eval_batches(root, Stage(1, 256, 0, {"src": 1.0}), 2, max_batches=1)


def test_packing_stats_count_cut_documents(corpus):
    root, _ = corpus
    split = TokenSplit(root, "src", "train")
    stats = data.packing_stats(split, 16)
    starts = np.asarray(split.doc_starts)
    ends = np.append(starts[1:], split.tokens)
    cut = sum(1 for s, e in zip(starts, ends) if s // 16 != (e - 1) // 16)
    assert stats.windows == (split.tokens - 1) // 16 and stats.tokens_dropped == (split.tokens - 1) % 16
    assert stats.documents == len(starts) and stats.documents_cut == cut and stats.docs_per_window > 1


# ---------------------------------------------------------------------------------------------------------------------
# built-in corpus


def test_prepare_builtin_splits_the_stdlib_into_two_disjoint_sources_and_reruns_as_noop(tmp_path, tokenizer_path):
    names = data_cli.prepare_builtin(tokenizer_path, tmp_path, workers=1, progress=False)
    assert names == list(BUILTIN)
    metas = [json.loads((tmp_path / name / "meta.json").read_text()) for name in names]
    documents = sum(m["splits"][split]["documents"] for m in metas for split in ("train", "val"))
    assert documents == sum(1 for f in builtin_corpus.builtin_files() if f.read_text(errors="replace").strip())
    assert all(m["splits"]["val"]["documents"] > 0 for m in metas)
    before = [(tmp_path / name / "meta.json").stat().st_mtime_ns for name in names]
    assert data_cli.prepare_builtin(tokenizer_path, tmp_path, workers=1, progress=False) == names
    assert [(tmp_path / name / "meta.json").stat().st_mtime_ns for name in names] == before


# ---------------------------------------------------------------------------------------------------------------------
# nothing a user made is lost; damaged sources are one-line errors


def test_prepare_refuses_to_replace_a_directory_that_is_not_a_prepared_source(tmp_path, tokenizer_path):
    thesis = tmp_path / "notes" / "thesis"
    thesis.mkdir(parents=True)
    (thesis / "chapter1.tex").write_text("my own work")
    source = write_jsonl(tmp_path / "in.jsonl", make_documents(5, seed=3, tag="doc"))
    with pytest.raises(DataError, match="is not a prepared source"):
        prepare([str(source)], tokenizer_path, tmp_path / "notes", "thesis", workers=1, progress=False)
    assert (thesis / "chapter1.tex").read_text() == "my own work"
    prepare([str(source)], tokenizer_path, tmp_path / "notes", "fresh", workers=1, progress=False)
    source.write_text(source.read_text() + json.dumps({"text": "one more"}) + "\n")  # ours: replaced on a re-run
    meta = json.loads((prepare([str(source)], tokenizer_path, tmp_path / "notes", "fresh", workers=1,
                               progress=False) / "meta.json").read_text())
    assert meta["splits"]["train"]["documents"] + meta["splits"]["val"]["documents"] == 6


def test_val_fraction_holds_out_the_requested_share(tmp_path, tokenizer_path):
    source = write_jsonl(tmp_path / "in.jsonl", make_documents(100, seed=4, tag="doc"))
    for fraction, expected in ((0.4, 40), (0.3, 30), (0.01, 1), (0.0, 0)):
        meta = json.loads((prepare([str(source)], tokenizer_path, tmp_path, f"v{fraction}", workers=1,
                                   val_fraction=fraction, progress=False) / "meta.json").read_text())
        assert meta["splits"]["val"]["documents"] == expected


def test_killed_prepare_debris_is_cleaned_and_outputs_follow_the_umask(tmp_path, tokenizer_path):
    debris = tmp_path / ".src.tmp-killed"
    debris.mkdir()
    (debris / "train_000000.bin").write_bytes(b"\0" * 8)
    source = write_jsonl(tmp_path / "in.jsonl", make_documents(5, seed=5, tag="doc"))
    old = os.umask(0o022)
    try:
        directory = prepare([str(source)], tokenizer_path, tmp_path, "src", workers=1, progress=False)
    finally:
        os.umask(old)
    assert not debris.exists() and not list(tmp_path.glob(".src.*"))
    assert directory.stat().st_mode & 0o777 == 0o755


def test_damaged_source_metadata_and_doc_starts_are_one_line_errors(tmp_path, corpus):
    copy = copied_source(corpus[0], tmp_path / "copy")
    starts = copy / "src" / "train_doc_starts.npy"
    starts.write_bytes(starts.read_bytes()[:100])
    with pytest.raises(DataError, match="train_doc_starts.npy: unreadable or truncated"):
        TokenSplit(copy, "src", "train")
    meta = json.loads((copy / "src" / "meta.json").read_text())
    del meta["bos_id"]
    (copy / "src" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="missing or malformed field 'bos_id'"):
        TokenSplit(copy, "src", "train")


def test_windows_overlap_by_one_token_so_every_pair_is_trained_and_the_grid_moves(corpus, tokenizer):
    root, _ = corpus
    stream = raw_stream(root, "src", "train")
    stage = Stage(1, 16, 0, {"src": 1.0})
    loader = Loader(root, stage, 1, seed=3)
    per_epoch = loader.windows[0]
    starts = []
    for batch in take(loader, 3 * per_epoch):
        window = np.array(batch_windows(batch, tokenizer.bos_id)[0])
        matches = [s for s in range(len(stream) - 16) if (stream[s:s + 17] == window).all()]
        starts.append(matches[0])
    epochs = [sorted(starts[e * per_epoch:(e + 1) * per_epoch]) for e in range(3)]
    for grid in epochs:
        assert all(b - a == 16 for a, b in zip(grid, grid[1:]))  # neighbours share one token: no pair is lost
        assert grid[0] + per_epoch * 16 <= len(stream) - 1
    assert len({grid[0] for grid in epochs}) > 1  # the grid is shifted per epoch


def test_binary_input_is_refused_unless_allowed(tmp_path, tokenizer_path):
    binary = tmp_path / "blob.txt"
    binary.write_bytes(bytes(range(128, 256)) * 200 + b"\n")
    with pytest.raises(InputError, match="blob.txt"):
        prepare([str(binary)], tokenizer_path, tmp_path, "b", workers=1, progress=False)
    prepare([str(binary)], tokenizer_path, tmp_path, "b", workers=1, progress=False, allow_binary=True)


@pytest.mark.parametrize("kind", ["parquet", "zst"])
def test_fineweb_parquet_and_slimpajama_zst_train_a_tokenizer_and_prepare_with_no_conversion(tmp_path, kind):
    documents = make_documents(120, seed=4, tag="web")
    rows = [{"id": i, "content": text} for i, text in enumerate(documents)]
    if kind == "parquet":
        pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
        path = tmp_path / "000_00000.parquet"
        pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=50)
    else:
        zstandard = pytest.importorskip("zstandard")
        path = tmp_path / "example_train_0.jsonl.zst"
        path.write_bytes(zstandard.ZstdCompressor().compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    plain = tmp_path / "plain.jsonl"
    plain.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert tokenizer_cli.main(["train", "--input", str(path), "--text-field", "content", "--vocab-size", "300",
                    "--out", str(tmp_path / "tok.txt"), "--workers", "1", "--quiet"]) == 0
    assert tokenizer_cli.main(["train", "--input", str(plain), "--text-field", "content", "--vocab-size", "300",
                    "--out", str(tmp_path / "plain.txt"), "--workers", "1", "--quiet"]) == 0
    assert Tokenizer.load(tmp_path / "tok.txt").fingerprint == Tokenizer.load(tmp_path / "plain.txt").fingerprint
    for source, name in ((path, "web"), (plain, "plain")):
        assert data_cli.main(["prepare", "--input", str(source), "--text-field", "content", "--tokenizer",
                          str(tmp_path / "tok.txt"), "--out", str(tmp_path / "data"), "--name", name]) == 0
    for split in ("train", "val"):
        web, ref = (TokenSplit(tmp_path / "data", name, split) for name in ("web", "plain"))
        assert web.tokens == ref.tokens > 0 and np.array_equal(web.read(0, web.tokens), ref.read(0, ref.tokens))


def test_ctrl_c_during_prepare_is_one_line_and_leaves_nothing_behind(tmp_path, tokenizer_path):
    documents = make_documents(3000, seed=5, tag="big") * 40  # ~8 MB: a few seconds of encoding
    source = write_jsonl(tmp_path / "big.jsonl", documents)
    process = subprocess.Popen([sys.executable, str(Path(data.__file__)), "prepare", "--input", str(source),
                                "--tokenizer", str(tokenizer_path), "--out", str(tmp_path / "out"), "--name", "big"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not list((tmp_path / "out").glob(".big.tmp-*")):  # the preparation has started writing
        assert process.poll() is None and time.time() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1].startswith("interrupted: nothing was written") and "Traceback" not in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == []  # no source, no staging folder, no lock
