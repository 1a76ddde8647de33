"""The built-in corpus: the running interpreter's own standard library, as documents and as conversations.

`python train.py` needs no data: it trains on this Python's standard library (read at run time, never copied), code
plus docstring and comment prose, a small echo of Fox-1's text + code mix. It is split into two sources so the
curriculum has somewhere to move: `stdlib-docs` (modules where strings and comments are >= 45% of the source, e.g.
pydoc_data/topics.py, typing.py) and `stdlib-code` (the rest). For the instruction-tuning stage the same files give
conversations: "Write a Python function `def name(args)` that: <docstring summary>" answered by the function's source,
and "What does `module.name` do?" answered by its docstring, held out by module. bench.py times tokenizers on the
standard library too (`benchmark_documents`: its top two levels of files, unfiltered, in blank-line-split pieces).
"""
from __future__ import annotations

import ast
import io
import itertools
import os
import re
import sysconfig
import tokenize
import zlib
from pathlib import Path
from typing import Iterator

from tqdm import tqdm

from fox1.documents import ReadStats, replace_lone_surrogates


# Built-in corpus: the stdlib minus installed packages, the test suites (17 MB of mostly assertion code and deliberately
# broken files, more than the rest of the stdlib together), the generated codec tables in encodings/ and the toy
# __phello__ package.
BUILTIN = ("stdlib-code", "stdlib-docs")
BUILTIN_SKIP_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "encodings", "__phello__"})
DOCS_PROSE_RATIO = 0.45  # on CPython 3.11: 213 of 607 non-empty modules, 4.2 of 10.7 MB, are at or above it
BUILTIN_VAL_FRACTION = 0.05  # the stdlib is small: 1 file in 20 is ~97K tokens (8K vocab), 94 windows of 1025


def builtin_files() -> list[Path]:
    """The interpreter's standard library .py files (see BUILTIN_SKIP_DIRS), sorted by path inside the stdlib."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for directory, subdirectories, names in os.walk(root):
        subdirectories[:] = [d for d in subdirectories if d not in BUILTIN_SKIP_DIRS]  # prune: never walk them
        files += [Path(directory) / name for name in names if name.endswith(".py")]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def builtin_documents(source: str | None = None, stats: ReadStats | None = None) -> Iterator[str]:
    """Each built-in file as one document: all of them, or only those of one BUILTIN source. Undecodable bytes
    become U+FFFD, counted in stats."""
    return read_files(builtin_files() if source is None else split_builtin(builtin_files())[source],
                       stats or ReadStats())


def benchmark_documents(megabytes: float) -> tuple[list[str], str]:
    """bench.py's text for its tokenizer and prepare rows: about `megabytes` MB of documents from this Python's
    standard library (read again from the start when more is asked for than it has: encoding costs the same the
    second time). Returns (documents, where they come from)."""
    stdlib = Path(os.__file__).parent
    files, source = sorted(stdlib.glob("*.py")) + sorted(stdlib.glob("*/*.py")), str(stdlib)
    documents, size = [], 0
    for path in itertools.cycle(files):
        text = path.read_text(encoding="utf-8", errors="replace")
        for document in text.split("\n\n\n"):
            documents.append(document)
            size += len(document.encode())
            if size >= megabytes * 1e6:
                return documents, source


def read_files(files: list[Path], stats: ReadStats) -> Iterator[str]:
    for path in files:
        text = replace_lone_surrogates(path.read_bytes().decode("utf-8", errors="surrogateescape"), stats)
        if text.strip():  # an empty __init__.py would only teach "<bos> is followed by <eos>"
            yield text


def prose_ratio(source: str) -> float:
    """Fraction of a Python file's characters inside string literals and comments (docstrings count as strings)."""
    prose = 0
    try:
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type in (tokenize.STRING, tokenize.COMMENT):
                prose += len(token.string)
    except (tokenize.TokenError, SyntaxError):  # not valid Python: count what was read before the error
        pass
    return prose / max(len(source), 1)


def split_builtin(files: list[Path], progress: bool = True) -> dict[str, list[Path]]:
    groups: dict[str, list[Path]] = {name: [] for name in BUILTIN}
    for path in tqdm(files, desc="classifying stdlib", unit="file", leave=False, disable=not progress):
        ratio = prose_ratio(path.read_text(encoding="utf-8", errors="replace"))
        groups["stdlib-docs" if ratio >= DOCS_PROSE_RATIO else "stdlib-code"].append(path)
    return groups



BUILTIN_CHAT = "stdlib-chat"
BUILTIN_CHAT_HELD_OUT = 10  # one module in 10 (by a hash of its name) is held out: 10% of the conversations
BUILTIN_CHAT_MAX_LINES = 25  # longer functions make replies of 300+ tokens (8K vocab): too long to teach a stop
BUILTIN_CHAT_MAX_DOC_CHARS = 800
# The prompt quotes the signature as the reply begins it ("def name(args)"), so BPE gives the name the same
# tokens in both and the reply can copy them: after a backtick, `name(` tokenizes as "get", "name" where the
# reply's "def getname(" has " get", "name", a translation between ids a 6.5M-parameter model never learned
# (0% of held-out replies started with the asked-for name; 480K tokens of SFT did not change it).
WRITE_FUNCTION_PROMPT = "Write a Python function `def {name}({args})` that: {summary}"
WRITE_FUNCTION = re.compile(r"Write a Python function `def (\w+)\(")



def builtin_conversations() -> dict[str, list[list[dict]]]:
    """Instruction conversations made from the standard library, {"train": [...], "val": [...]}: for every public
    top-level function or class with a docstring, "Write a Python function `def name(args)` that: <first paragraph of
    its docstring>" answered by the function's source, and "What does `module.name` do?" answered by the docstring.
    All conversations of a module go to one split, so the held-out ones ask about code the model never saw."""
    root = Path(sysconfig.get_paths()["stdlib"])
    splits: dict[str, list[list[dict]]] = {"train": [], "val": []}
    for path in builtin_files():
        module = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        split = "val" if zlib.crc32(module.encode()) % BUILTIN_CHAT_HELD_OUT == 0 else "train"
        splits[split] += module_conversations(path.read_text(encoding="utf-8", errors="replace"), module)
    return splits


def module_conversations(source: str, module: str) -> list[list[dict]]:
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    conversations = []
    for node in tree.body:
        if not isinstance(node, (ast.FunctionDef, ast.ClassDef)) or node.name.startswith("_"):
            continue
        doc = ast.get_docstring(node)
        if not doc:
            continue
        code = ast.get_source_segment(source, node) if isinstance(node, ast.FunctionDef) else None
        if code and code.count("\n") < BUILTIN_CHAT_MAX_LINES:
            summary = " ".join(doc.split("\n\n")[0].split())
            prompt = WRITE_FUNCTION_PROMPT.format(name=node.name, args=ast.unparse(node.args), summary=summary)
            conversations.append(exchange(prompt, code))
        if len(doc) <= BUILTIN_CHAT_MAX_DOC_CHARS:
            conversations.append(exchange(f"What does `{module}.{node.name}` do?", doc))
    return conversations


def exchange(question: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]

