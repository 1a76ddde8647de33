"""Tests for sample.py: the KV-cached generator against the uncached model, sampling restrictions, per-row
randomness in batches, UTF-8 streaming, and the command line (output, speeds, one-line errors)."""
import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cli import sample as sample_cli
import sample
from fox1.speed import column_major, default_dtype, native_bf16, streams_column_major
from model import Fox, FoxConfig
from sample import TextStream, allowed_tokens, generate, sample_next
from tokenizer import Tokenizer

REPO = Path(__file__).resolve().parent.parent
CONTEXT = 64

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def model(tokenizer) -> Fox:
    """Random weights, 2 layers. init_std 0.3 (not 0.02) makes the logits spread out, so greedy decoding
    does not repeat one token and near-ties that batched/unbatched rounding could flip are rare."""
    torch.manual_seed(0)
    config = FoxConfig.from_preset("tiny", vocab_size=tokenizer.vocab_size, num_layers=2, context_len=CONTEXT,
                                   init_std=0.3)
    return Fox(config).eval()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, model, tokenizer) -> Path:
    """An export as train.py writes it: config.json + model.safetensors + tokenizer.txt."""
    directory = tmp_path_factory.mktemp("export")
    ids = {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id, "pad_token_id": 0}
    model.save_pretrained(directory, token_ids=ids, tokenizer_fingerprint=tokenizer.fingerprint)
    tokenizer.save(directory / "tokenizer.txt")
    return directory


def prompts(tokenizer: Tokenizer, texts: list[str]) -> torch.Tensor:
    """<bos> + text for each text, cut to the shortest so the rows form one (B, T) batch."""
    ids = [[tokenizer.bos_id] + tokenizer.encode(t) for t in texts]
    length = min(map(len, ids))
    return torch.tensor([row[:length] for row in ids])


# --------------------------------------------------------------------------------------------------
# generate()


def test_greedy_equals_argmax_of_the_uncached_forward_at_every_step(model, tokenizer):
    prompt = prompts(tokenizer, ["def main(argv):\n", "import sys, os\n", "class Path(object):"])
    new = torch.tensor(generate(model, prompt, 24, temperature=0).tokens)
    assert new.shape == (3, 24)
    assert len(set(new.flatten().tolist())) > 10  # a non-trivial sequence, not one token repeated
    with torch.no_grad():
        logits = model(torch.cat([prompt, new], dim=1))  # no cache: every position from scratch
    T = prompt.size(1)
    assert torch.equal(logits[:, T - 1:-1].argmax(dim=-1), new)


def test_compiled_prefill_and_decode_step_give_the_eager_tokens(model, tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # a cold compile, ~20 s
    # two prompt lengths, then two rows: a second compiled decode step beside the first, which the decode loop,
    # running without Dynamo's guards, must still tell apart (`sample.decode`)
    for texts in (["def main(argv):\n"], ["import os\nimport sys\n\nclass Parser:\n"], ["def main(argv):\n"] * 2):
        prompt = prompts(tokenizer, texts)
        eager = generate(model, prompt, 12, temperature=0)
        compiled = generate(model, prompt, 12, temperature=0, compile=True)
        assert compiled.tokens == eager.tokens
        assert compiled.compile_seconds > 0 and eager.compile_seconds == 0
        assert compiled.decode_steps == eager.decode_steps == 11  # compiled by an untimed call before decoding


def test_column_major_weights_give_the_same_logits_and_tokens(model, tokenizer):
    streamed = column_major(copy.deepcopy(model))
    gate_up = streamed.layers[0].mlp.gate_up_proj.weight
    assert gate_up.shape == model.layers[0].mlp.gate_up_proj.weight.shape and gate_up.stride() == (1, gate_up.size(0))
    prompt = prompts(tokenizer, ["def main(argv):\n"])
    with torch.no_grad():
        expected = model(prompt)  # logits up to ~18: MKL sums in another order (1e-5 of that on an AMX Xeon)
        assert torch.allclose(streamed(prompt), expected, rtol=0, atol=1e-4 * float(expected.abs().max()))
    assert generate(streamed, prompt, 12, temperature=0).tokens == generate(model, prompt, 12, temperature=0).tokens
    cpu, fp32 = torch.device("cpu"), torch.float32
    assert streams_column_major(cpu, fp32, compile=False, rows=1)
    assert not any((streams_column_major(cpu, fp32, compile=True, rows=1),  # compile's loop reads rows
                    streams_column_major(cpu, fp32, compile=False, rows=8),  # MKL prefers rows at 8 rows
                    streams_column_major(cpu, torch.bfloat16, compile=False, rows=1)))


def test_default_dtype_is_bf16_only_where_it_decodes_faster():
    cpu = torch.device("cpu")
    assert default_dtype(torch.device("cuda"), compile=False, quantize=None) == "bfloat16"
    assert default_dtype(cpu, compile=False, quantize=None) == "float32"  # eager bf16 is no faster
    assert default_dtype(cpu, compile=True, quantize="int8") == "float32"  # int8 converts to fp32 faster
    native = "bfloat16" if native_bf16(cpu) else "float32"
    assert default_dtype(cpu, compile=True, quantize=None) == native


def test_same_seed_same_tokens_other_seed_other_tokens(model, tokenizer):
    prompt = prompts(tokenizer, ["for i in range"])
    run = lambda seed: generate(model, prompt, 30, temperature=1.0, seed=seed).tokens  # noqa: E731
    assert run(7) == run(7)
    assert run(7) != run(8)


def test_sampled_tokens_respect_top_k_and_top_p(model, tokenizer):
    """Every sampled token must be among the top_k highest logits of the uncached forward, and the
    probability of the tokens strictly more likely than it (within the top k) must be below top_p."""
    prompt = prompts(tokenizer, ["def f(x):\n    return"] * 8)
    top_k, top_p, temperature = 20, 0.6, 2.0  # a high temperature spreads the picks over many tokens
    new = torch.tensor(generate(model, prompt, 16, temperature=temperature, top_k=top_k, top_p=top_p,
                                seed=3).tokens)
    with torch.no_grad():
        logits = model(torch.cat([prompt, new], dim=1))[:, prompt.size(1) - 1:-1] / temperature
    picked = logits.gather(-1, new[..., None])
    rank = (logits > picked).sum(-1)  # how many tokens beat the picked one
    assert rank.max() < top_k
    top_logits = logits.topk(top_k, dim=-1).values
    top_probs = top_logits.softmax(-1)
    mass_above = (top_probs * (top_logits > picked)).sum(-1)
    assert mass_above.max() < top_p
    assert len(set(new.flatten().tolist())) > 16  # sampling really varied: the checks were not vacuous
    assert (rank > 0).any()  # and it did not always pick the most likely token


def test_sample_next_draws_from_the_restricted_distribution():
    """With probabilities 0.5, 0.3, 0.15, 0.05: top_k=3 renormalises the first three, top_p=0.7 keeps
    {0, 1} (0.5 < 0.7 needs the second); the observed frequencies match within 3 percentage points."""
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    g = torch.Generator().manual_seed(0)
    draws = 4000
    for top_k, top_p, expected in [(None, None, [0.5, 0.3, 0.15, 0.05]), (3, None, [0.5 / 0.95, 0.3 / 0.95,
                                   0.15 / 0.95, 0.0]), (None, 0.7, [0.625, 0.375, 0.0, 0.0])]:
        picks = torch.cat([sample_next(logits, [g], 1.0, top_k, top_p) for _ in range(draws)])
        frequencies = torch.bincount(picks, minlength=4) / draws
        assert torch.allclose(frequencies, torch.tensor(expected), atol=0.03), (top_k, top_p, frequencies)
        assert (frequencies[torch.tensor(expected) == 0] == 0).all()
    assert sample_next(logits, [g], 0.0).item() == 0  # temperature 0: greedy
    assert allowed_tokens(logits, 1, 0.99).tolist() == [[True, False, False, False]]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_batched_rows_equal_separately_generated_ones(model, tokenizer, temperature):
    """Row r of a batch with seed s equals the row generated alone with seed s + r, even when the rows stop
    at <eos> at different steps (here "eos" is a token that row 0 produces at step 5)."""
    prompt = prompts(tokenizer, ["def main(argv):\n", "import sys, os\n", "class Path(object):"])
    alone = generate(model, prompt[0], 20, temperature=temperature, seed=11).tokens[0]
    eos = alone[5]
    batched = generate(model, prompt, 20, temperature=temperature, seed=11, eos_id=eos).tokens
    separate = [generate(model, prompt[r], 20, temperature=temperature, seed=11 + r, eos_id=eos).tokens[0]
                for r in range(3)]
    assert batched == separate
    assert batched[0] == alone[:alone.index(eos)]  # row 0 stopped before its <eos>
    assert len({len(row) for row in batched}) > 1  # the rows really stopped at different steps


def test_eos_stops_generation_and_is_not_returned(model, tokenizer):
    prompt = prompts(tokenizer, ["while True:"])
    free = generate(model, prompt, 12, temperature=0).tokens[0]
    result = generate(model, prompt, 12, temperature=0, eos_id=free[3])
    assert result.tokens[0] == free[:free.index(free[3])]
    assert result.decode_steps == free.index(free[3])  # no forward after the <eos>


def test_vocab_limit_keeps_tokens_below_it(model, tokenizer):
    prompt = prompts(tokenizer, ["x = [1, 2, 3]"] * 4)
    tokens = generate(model, prompt, 20, temperature=1.5, seed=0, vocab_limit=300).tokens
    assert max(max(row) for row in tokens) < 300


def test_prompt_that_does_not_fit_the_context_is_refused(model):
    with pytest.raises(sample.SampleError, match=f"prompt of 60 tokens \\+ 6 new tokens needs 65 .* context of {CONTEXT}"):
        generate(model, list(range(60)), 6)
    assert len(generate(model, list(range(60)), 5, temperature=0).tokens[0]) == 5  # 64 positions: exactly fits


def test_ragged_prompts_and_bad_temperatures_are_refused_in_one_line(model):
    with pytest.raises(sample.SampleError, match="prompts of different lengths \\(2 to 3 tokens\\)"):
        generate(model, [[1, 2], [1, 2, 3]], 4)
    for temperature in (float("nan"), float("inf"), 1e-45, -1.0):
        with pytest.raises(sample.SampleError, match="use 0 \\(greedy\\) or a finite value"):
            generate(model, [1, 2], 4, temperature=temperature)


def test_a_list_of_eos_ids_stops_at_any_of_them(model):
    prompt = list(range(1, 9))
    free = generate(model, prompt, 12, temperature=0).tokens[0]
    stop_at = next(i for i, t in enumerate(free) if t not in free[:i] and i >= 2)
    result = generate(model, prompt, 12, temperature=0, eos_id=[100000, free[stop_at]])
    assert result.tokens[0] == free[:stop_at]


# --------------------------------------------------------------------------------------------------
# Streaming text


def test_text_stream_holds_back_characters_split_across_tokens(tokenizer):
    text = "naïve café: 東京 → 😀 ok"  # 2-, 3- and 4-byte characters the stdlib-trained merges never saw
    ids = tokenizer.encode(text)
    pieces = [tokenizer.decode_bytes([i]) for i in ids]
    assert any(_incomplete_utf8(piece) for piece in pieces)  # some character really is split
    stream, seen, out = TextStream(tokenizer), b"", ""
    for i, piece in zip(ids, pieces):
        seen += piece
        out += stream.push(i)
        assert out == _longest_decodable_prefix(seen)  # everything complete is out, nothing broken
    out += stream.finish()
    assert out == text


def _incomplete_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return False
    except UnicodeDecodeError:
        return True


def _longest_decodable_prefix(data: bytes) -> str:
    for cut in range(len(data), -1, -1):
        try:
            return data[:cut].decode("utf-8")
        except UnicodeDecodeError:
            continue


def test_text_stream_replaces_bytes_that_never_form_a_character(tokenizer):
    stream = TextStream(tokenizer)
    euro = "€".encode()  # 3 bytes; send only the first two, then an ASCII letter
    byte_ids = [tokenizer.encode(bytes([b]).decode("latin-1"))[0] for b in b"a"]
    out = stream.push(tokenizer.ranks[euro[:1]]) + stream.push(tokenizer.ranks[euro[1:2]]) + stream.push(byte_ids[0])
    assert out + stream.finish() == "\ufffda"


# --------------------------------------------------------------------------------------------------
# Command line


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # as the one_thread fixture does in-process
    return subprocess.run([sys.executable, str(REPO / "sample.py"), *args], capture_output=True, text=True,
                          cwd=REPO, timeout=120, env=env)


def test_cli_streams_the_greedy_text_and_reports_speeds(ckpt, tokenizer):
    result = run_cli("--ckpt", str(ckpt), "--prompt", "def main():\n", "--max-new-tokens", "20",
                     "--temperature", "0", "--no-token-healing")
    assert result.returncode == 0, result.stderr
    model = Fox.from_pretrained(ckpt).eval()
    prompt = [tokenizer.bos_id] + tokenizer.encode("def main():\n")
    expected = generate(model, prompt, 20, temperature=0, eos_id=tokenizer.eos_id).tokens[0]
    assert result.stdout == "def main():\n" + tokenizer.decode(expected) + "\n"
    assert "prefill:" in result.stderr and "decode:" in result.stderr and "tokens/s" in result.stderr


def test_heal_prompt_drops_the_last_token_and_allows_its_extensions(tokenizer):
    ids = [tokenizer.bos_id] + tokenizer.encode("def ")
    healed, tail, allowed = sample.heal_prompt(tokenizer, ids)
    assert healed == ids[:-1] and tail == b" " and ids[-1] in allowed
    assert all(tokenizer.decode_bytes([i]).startswith(b" ") for i in allowed)
    assert len(allowed) == sum(token.startswith(b" ") for token in tokenizer.ranks)  # all of them
    special_end = [tokenizer.bos_id] + tokenizer.encode("hi<end_of_turn>", allow_special=True)
    assert sample.heal_prompt(tokenizer, special_end) == (special_end, b"", None)
    assert sample.heal_prompt(tokenizer, [tokenizer.bos_id]) == ([tokenizer.bos_id], b"", None)


def test_cli_token_healing_continues_the_prompt_text_exactly(ckpt, tokenizer, capsys):
    model = Fox.from_pretrained(ckpt).eval()
    ids, tail, allowed = sample.heal_prompt(tokenizer, [tokenizer.bos_id] + tokenizer.encode("def "))
    for seed in range(4):
        assert sample_cli.main(["--ckpt", str(ckpt), "--prompt", "def ", "--max-new-tokens", "12",
                            "--temperature", "1.0", "--top-k", "0", "--top-p", "1", "--seed", str(seed)]) == 0
        out = capsys.readouterr().out
        tokens = generate(model, ids, 12, temperature=1.0, seed=seed,
                          eos_id=tokenizer.eos_id, vocab_limit=tokenizer.vocab_size, first_allowed=allowed).tokens[0]
        assert tokenizer.decode_bytes(tokens[:1]).startswith(b" ")  # the first token re-creates the space
        assert out == "def " + tokenizer.decode_bytes(tokens)[1:].decode("utf-8", errors="replace") + "\n"


def test_cli_num_samples_equal_single_runs_with_consecutive_seeds(ckpt, capsys):
    common = ["--ckpt", str(ckpt), "--prompt", "import", "--max-new-tokens", "8", "--temperature", "1.0"]
    assert sample_cli.main(common + ["--num-samples", "2", "--seed", "5"]) == 0  # in-process: saves ~4 s of imports
    batched = capsys.readouterr().out
    assert sample_cli.main(common + ["--seed", "6"]) == 0
    single = capsys.readouterr().out
    assert f"--- sample 1 (seed 6) ---\n{single}" in batched


def test_cli_missing_checkpoint_is_one_line_and_exit_1(tmp_path):
    result = run_cli("--ckpt", str(tmp_path / "nowhere"), "--prompt", "hi")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    assert "nowhere" in result.stderr and "config.json" in result.stderr
    assert result.stdout == ""


def one_line_error(capsys, argv: list[str]) -> str:
    """Run main() in-process (a subprocess per case would cost ~3 s of imports) and return its message."""
    assert sample_cli.main(argv) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and captured.err.startswith("error: ")
    return captured.err


def test_cli_errors(ckpt, tmp_path, capsys, tokenizer):
    # <bos> + "x" healed (regenerated by the first new token): 1 prompt token + CONTEXT new ones need CONTEXT positions
    assert sample_cli.main(["--ckpt", str(ckpt), "--prompt", "x", "--max-new-tokens", str(CONTEXT), "--temperature", "0"]) == 0
    capsys.readouterr()
    too_long = one_line_error(capsys, ["--ckpt", str(ckpt), "--prompt", "x y", "--max-new-tokens", str(CONTEXT)])
    prompt_len, positions = map(int, re.search(r"prompt of (\d+) tokens \+ \d+ new tokens needs (\d+)", too_long).groups())
    assert positions == prompt_len + CONTEXT - 1 > CONTEXT and f"context of {CONTEXT}" in too_long

    latin1 = tmp_path / "prompt.txt"
    latin1.write_bytes("café".encode("latin-1"))
    assert "not valid UTF-8" in one_line_error(capsys, ["--ckpt", str(ckpt), "--prompt", f"@{latin1}"])
    assert "not found" in one_line_error(capsys, ["--ckpt", str(ckpt), "--prompt", f"@{tmp_path}/none.txt"])

    hf_style = tmp_path / "hf"  # weights without tokenizer.txt, like the released Fox-1 directory
    Fox(FoxConfig.from_preset("tiny", vocab_size=400, num_layers=1, context_len=CONTEXT)).save_pretrained(hf_style)
    assert "--tokenizer" in one_line_error(capsys, ["--ckpt", str(hf_style)])
    mismatch = one_line_error(capsys, ["--ckpt", str(hf_style), "--tokenizer", str(ckpt / "tokenizer.txt")])
    assert f"{tokenizer.vocab_size} tokens" in mismatch and "400" in mismatch

    other = tmp_path / "other.txt"  # same size of vocabulary, another tokenizer: its ids mean other text
    stdlib = sorted(Path(os.__file__).parent.glob("*.py"))[40:60]
    Tokenizer.train([p.read_text(encoding="utf-8") for p in stdlib], 512, workers=1, progress=False).save(other)
    assert "is not the tokenizer" in one_line_error(capsys, ["--ckpt", str(ckpt), "--tokenizer", str(other)])

    corrupt = tmp_path / "corrupt.txt"
    corrupt.write_text((ckpt / "tokenizer.txt").read_text()[:500])
    assert "corrupt.txt" in one_line_error(capsys, ["--ckpt", str(ckpt), "--tokenizer", str(corrupt)])


# --------------------------------------------------------------------------------------------------
# The export is a complete Hugging Face folder (checked against transformers only where it is installed)


def test_transformers_reads_the_export_and_generates_the_same_greedy_tokens(ckpt, model, tokenizer):
    transformers = pytest.importorskip("transformers")
    tokenizer.save_pretrained(ckpt)  # what train.py's export adds next to the weights
    text = "def parse(self, text):\n    return  [x  for x in\ttext]  # naïve 😀"
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(ckpt))
    assert hf_tokenizer(text, add_special_tokens=False)["input_ids"] == tokenizer.encode(text)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(str(ckpt), torch_dtype=torch.float32).eval()
    prompt = [tokenizer.bos_id] + tokenizer.encode("import os\ndef ")
    ours = generate(model, prompt, 16, temperature=0).tokens[0]
    with torch.no_grad():
        theirs = hf_model.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False,
                                   eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
    assert theirs == ours


@pytest.fixture
def silent_ckpt(tmp_path, model, tokenizer) -> Path:
    """A model whose final norm is zero: every logit is 0, so greedy decoding writes <pad> (id 0) forever."""
    silent = copy.deepcopy(model)
    with torch.no_grad():
        silent.norm.weight.zero_()
    silent.save_pretrained(tmp_path, token_ids={"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id},
                           tokenizer_fingerprint=tokenizer.fingerprint)
    tokenizer.save(tmp_path / "tokenizer.txt")
    return tmp_path


def test_special_tokens_are_hidden_unless_asked_for(silent_ckpt, capsys):
    argv = ["--ckpt", str(silent_ckpt), "--prompt", "x", "--max-new-tokens", "5", "--temperature", "0",
            "--no-token-healing"]
    assert sample_cli.main(argv) == 0
    assert capsys.readouterr().out == "x\n"
    assert sample_cli.main(argv + ["--show-special"]) == 0
    assert capsys.readouterr().out == "x" + "<pad>" * 5 + "\n"
    assert sample_cli.main(argv + ["--num-samples", "2", "--seed", "0"]) == 0
    assert capsys.readouterr().out == "--- sample 0 (seed 0) ---\nx\n--- sample 1 (seed 1) ---\nx\n"


def test_generation_stops_at_every_eos_id_of_the_checkpoint(silent_ckpt, tokenizer, capsys):
    config = json.loads((silent_ckpt / "generation_config.json").read_text())
    config["eos_token_id"] = [tokenizer.eos_id, tokenizer.pad_id]  # as Gemma's lists <eos> and <end_of_turn>
    (silent_ckpt / "generation_config.json").write_text(json.dumps(config))
    assert sample_cli.main(["--ckpt", str(silent_ckpt), "--prompt", "x", "--max-new-tokens", "5", "--temperature", "0",
                        "--no-token-healing", "--show-special"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "x\n" and "decode: 0 tokens" in captured.err  # stopped at the first <pad>


def test_non_finite_weights_are_one_line_not_a_string_of_pads(ckpt, tmp_path, model, capsys):
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken.layers[0].mlp.down_proj.weight[0, 0] = float("nan")
    broken.save_pretrained(tmp_path)
    shutil.copy(ckpt / "tokenizer.txt", tmp_path / "tokenizer.txt")
    assert sample_cli.main(["--ckpt", str(tmp_path), "--prompt", "x", "--max-new-tokens", "8"]) == 1
    captured = capsys.readouterr()  # the model's description line, then the error: no text, no traceback
    assert captured.out == "" and captured.err.splitlines()[-1].startswith("error: the model's logits are not finite")
