"""Tests for fox1/bpe_file.py: tokenizer.txt written atomically, read back exactly, and every kind of damage is one
line naming the file (through Tokenizer.save / Tokenizer.load)."""
import pytest

from fox1 import files
from fox1.files import InputError
from tokenizer import Tokenizer


def test_save_load_round_trip(trained, tmp_path):
    path = tmp_path / "sub" / "tok.txt"
    trained.save(path)
    assert [p.name for p in path.parent.iterdir()] == ["tok.txt"]  # no temporary file left behind
    loaded = Tokenizer.load(path)
    assert loaded.ranks == trained.ranks and loaded.pattern == trained.pattern
    assert loaded.fingerprint == trained.fingerprint
    assert loaded.encode("hello <eos>", allow_special=True) == trained.encode("hello <eos>", allow_special=True)
    header = path.read_text(encoding="utf-8").split("tokens\n")[0]
    assert "format fox1-bpe-1" in header and "<start_of_turn>" in header and "vocab_size 1500" in header


@pytest.mark.parametrize(
    "damage",
    ["truncate_lines", "truncate_bytes", "header_only", "flip_token", "bad_base64", "bad_id", "binary", "empty"],
)
def test_corrupt_file_gives_one_clear_error(trained, tmp_path, damage):
    path = tmp_path / "tok.txt"
    trained.save(path)
    data = path.read_bytes()
    lines = data.split(b"\n")
    if damage == "truncate_lines":
        data = b"\n".join(lines[:-100])
    elif damage == "truncate_bytes":
        data = data[: len(data) - 1234]
    elif damage == "header_only":
        data = b"\n".join(lines[:3])
    elif damage == "flip_token":  # valid base64 of other bytes: only the fingerprint can notice
        lines[700] = b"eHl6 " + lines[700].split(b" ", 1)[1]
        data = b"\n".join(lines)
    elif damage == "bad_base64":
        lines[700] = b"!!!! " + lines[700].split(b" ", 1)[1]
        data = b"\n".join(lines)
    elif damage == "bad_id":
        token, _, preview = lines[700].split(b" ", 2)
        data = b"\n".join(lines[:700] + [token + b" 99999 " + preview] + lines[701:])
    elif damage == "binary":
        data = b"\xff\xfe" + data[2:]
    else:
        data = b""
    path.write_bytes(data)
    with pytest.raises(InputError) as error:
        Tokenizer.load(path)
    message = str(error.value)
    assert str(path) in message and "\n" not in message
    with pytest.raises(InputError, match="cannot read"):
        Tokenizer.load(tmp_path / "missing.txt")
    with pytest.raises(InputError, match="cannot write"):
        trained.save(path / "inside_a_file.txt")


def test_failed_write_leaves_no_temporary_file(trained, tmp_path):
    target = tmp_path / "a_directory"
    (target / "inside").mkdir(parents=True)
    with pytest.raises(InputError, match="cannot write tokenizer file"):
        trained.save(target)  # the rename onto a directory fails after the temporary file was written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_directory"]
    files.write_atomic(tmp_path / "new" / "f.bin", b"\x00\x01")
    assert (tmp_path / "new" / "f.bin").read_bytes() == b"\x00\x01"
    assert [p.name for p in (tmp_path / "new").iterdir()] == ["f.bin"]


@pytest.mark.parametrize("line", ["pattern 12", 'pattern "("', "pattern [1, 2]", "special_tokens 7", "pattern"])
def test_header_values_of_the_wrong_kind_give_one_clear_error(trained, tmp_path, line):
    path = tmp_path / "tok.txt"
    trained.save(path)
    key = line.split(" ")[0]
    lines = [line if text.startswith(key + " ") else text for text in path.read_text(encoding="utf-8").split("\n")]
    path.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(InputError) as error:
        Tokenizer.load(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)
