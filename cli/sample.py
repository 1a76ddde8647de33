"""The command line of sample.py: open a checkpoint folder (model, tokenizer and their bos / eos ids, checked to
belong together), then print samples or hold a chat. `python sample.py ...` runs `main` here."""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch

from fox1.chat_template import DEFAULT_CHAT_TEMPLATE, load_chat_template
from fox1.corpus import builtin_conversations
from fox1.files import InputError, Number, check_numbers, text_argument
from fox1.hf_llama import checkpoint_tokens
from fox1.machine import parse_device
from fox1.speed import (column_major, default_dtype, huge_pages, quantize_int4, quantize_int8,
                        streams_column_major)
from model import CheckpointError, Fox
from sample import (DEFAULT_CHAT_CKPT, DEFAULT_CKPT, Generation, SampleError, TextStream, chat_turn, check_fits,
                    check_temperature, generate, heal_prompt, new_seed, sample_next, score_chat, start_chat)
from tokenizer import Tokenizer, load_tokenizer


def user_turns(prompt: str) -> Iterator[str]:
    """--prompt as the one user turn; else each line typed at the terminal ("> " on stderr) or piped in."""
    if prompt:
        yield prompt
        return
    while True:
        if sys.stdin.isatty():
            sys.stderr.write("> ")
            sys.stderr.flush()
        line = sys.stdin.readline()
        if not line:
            return
        if line.strip():
            yield line.rstrip("\n")


def run_chat(model: Fox, tokenizer: Tokenizer, ckpt: Path, args: argparse.Namespace, seed: int) -> None:
    """--chat: a conversation on stdin/stdout; --score-chat N: ChatScores on N held-out built-in conversations."""
    template = load_chat_template(ckpt) or DEFAULT_CHAT_TEMPLATE
    if args.score_chat:
        held_out = builtin_conversations()["val"]
        picked = held_out[::max(1, len(held_out) // args.score_chat)][:args.score_chat]  # spread over the modules
        print(json.dumps(asdict(score_chat(model, tokenizer, template, picked, args.max_new_tokens))))
        return
    generator = torch.Generator(model.embed_tokens.weight.device).manual_seed(seed)

    def choose(logits: torch.Tensor) -> torch.Tensor:
        return sample_next(logits[:, :tokenizer.vocab_size], [generator], args.temperature, args.top_k or None,
                           args.top_p)

    session = start_chat(model, tokenizer, template, args.system)
    for text in user_turns(text_argument(args.prompt)):
        stream = TextStream(tokenizer, show_special=args.show_special)

        def show(ids: list[int]) -> None:
            if ids[0] not in session.stop_ids:
                sys.stdout.write(stream.push(ids[0]))
                sys.stdout.flush()

        try:
            chat_turn(model, session, text, args.max_new_tokens, choose, show)
        except SampleError as error:  # this turn cannot be answered; the conversation goes on
            print(f"error: {error}", file=sys.stderr)
            continue
        except KeyboardInterrupt:  # Ctrl-C stops the reply, not the session
            print("\n[reply stopped; the turn was dropped]", file=sys.stderr)
            continue
        finally:
            sys.stdout.write(stream.finish() + "\n")
            sys.stdout.flush()
        print(f"[prefilled {session.prefilled} new tokens; {len(session.cached)} in the KV cache]", file=sys.stderr)


def open_tokenizer(ckpt: Path, tokenizer_path: str | None) -> Tokenizer:
    """--tokenizer PATH (tokenizer.txt, tokenizer.json or a folder), else the checkpoint folder's own
    tokenizer.json / tokenizer.txt. Refuses a tokenizer other than the one our export recorded: another
    vocabulary would turn the model's ids into gibberish (a Hugging Face folder records none)."""
    path = Path(tokenizer_path) if tokenizer_path else ckpt
    if not path.exists():
        raise SampleError(f"{path}: tokenizer file not found")
    if path.is_dir() and not any((path / name).is_file() for name in ("tokenizer.json", "tokenizer.txt")):
        raise SampleError(f"{path} has no tokenizer.json or tokenizer.txt: pass --tokenizer PATH")
    tokenizer = load_tokenizer(path)
    recorded = checkpoint_tokens(ckpt).tokenizer_fingerprint
    if recorded and recorded != tokenizer.fingerprint:
        raise SampleError(f"{path} is not the tokenizer {ckpt} was trained with (fingerprint "
                          f"{tokenizer.fingerprint[:12]}, the export records {recorded[:12]})")
    return tokenizer


def special_ids(ckpt: Path, tokenizer: Tokenizer) -> tuple[int, list[int]]:
    """(bos id, eos ids): the checkpoint's own (generation_config.json / config.json), else the tokenizer's."""
    tokens = checkpoint_tokens(ckpt)
    bos = tokens.bos_id if tokens.bos_id is not None else tokenizer.bos_id
    eos = tokens.eos_ids or [tokenizer.eos_id]
    if bos is None:
        raise SampleError(f"{ckpt}: neither the checkpoint nor its tokenizer names a bos token")
    return bos, [i for i in eos if i is not None]


def check_checkpoint(ckpt: Path) -> None:
    """Fail early, before loading anything, when there is no checkpoint at all."""
    if not (ckpt / "config.json").is_file():
        hint = " (run `python train.py` first, or pass --ckpt DIR)" if str(ckpt) in (DEFAULT_CKPT,
                                                                                   DEFAULT_CHAT_CKPT) else ""
        raise SampleError(f"{ckpt}: no checkpoint here (config.json not found){hint}")


@dataclass
class Checkpoint:
    """A model with the tokenizer and the bos / eos ids it was trained with."""

    model: Fox
    tokenizer: Tokenizer
    bos_id: int
    eos_ids: list[int]
    dtype: torch.dtype


def open_checkpoint(ckpt: Path, tokenizer_path: str | None, device: torch.device, dtype_name: str | None
                    ) -> Checkpoint:
    """Load a checkpoint folder for inference (sample.py, eval.py), checking that its parts belong together.
    dtype_name None: `default_dtype` of an eager decode (bfloat16 on CUDA, float32 on CPU)."""
    dtype = getattr(torch, dtype_name or default_dtype(device, compile=False, quantize=None))
    check_checkpoint(ckpt)
    tokenizer = open_tokenizer(ckpt, tokenizer_path)
    bos, eos_ids = special_ids(ckpt, tokenizer)
    model = Fox.from_pretrained(ckpt, dtype=dtype, device=device).eval()
    if tokenizer.vocab_size > model.config.vocab_size:
        raise SampleError(f"tokenizer has {tokenizer.vocab_size} tokens but the model in {ckpt} only "
                          f"{model.config.vocab_size}: they do not belong together")
    return Checkpoint(model, tokenizer, bos, eos_ids, dtype)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Generate text from a Fox checkpoint (KV-cached, optionally compiled).")
    p.add_argument("--ckpt", help=f"our export or a Llama-format Hugging Face directory (default: {DEFAULT_CKPT}, "
                   f"the base model; for --chat / --score-chat {DEFAULT_CHAT_CKPT}, the SFT model, where it exists)")
    p.add_argument("--tokenizer", help="tokenizer.txt, tokenizer.json or a folder (default: the one in --ckpt)")
    p.add_argument("--prompt", default="", help="prompt text, or @FILE to read it from a UTF-8 file")
    p.add_argument("--chat", action="store_true",
                   help="talk through the checkpoint's chat template (ours if it has none): --prompt is one user "
                        "turn, else every line typed or piped in is one; the KV cache is kept across turns")
    p.add_argument("--system", help="--chat: a system message before the first turn")
    p.add_argument("--score-chat", type=int, metavar="N",
                   help="score N held-out built-in conversations (greedy): share of replies that end, of "
                        "'Write a Python function' replies that start with its def, masked reply loss")
    p.add_argument("--max-new-tokens", type=int, default=200, help="tokens to generate (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (default: %(default)s)")
    p.add_argument("--top-k", type=int, default=200, help="sample among the k most likely tokens, 0 = off (default: %(default)s)")
    p.add_argument("--top-p", type=float, default=0.9,
                   help="nucleus sampling mass, 1 = off; 0.9 cuts the long tail of unlikely tokens that derails "
                        "small models (default: %(default)s)")
    p.add_argument("--seed", type=int, help="sample r uses seed+r (default: random, printed)")
    p.add_argument("--num-samples", type=int, default=1, help="samples, generated as one batch (default: %(default)s)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the prefill and the decode step (a slow start: ~30 s on a 2-core CPU)")
    p.add_argument("--show-special", action="store_true",
                   help="print special tokens (<end_of_turn>, ...) as text instead of hiding them")
    p.add_argument("--token-healing", action=argparse.BooleanOptionalAction, default=True,
                   help="regenerate the prompt's last token, so a prompt ending mid-word or in a space "
                        "continues naturally (default: on)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu, cuda, cuda:1 ... (default: %(default)s)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                   help="weights and KV cache (default: bfloat16 on cuda, and on a cpu with native bf16 for --compile "
                        "without --quantize; else float32)")
    p.add_argument("--quantize", choices=["int8", "int4"],
                   help="weights quantised at load (fox1/speed.py): int8 with per-row scales, int4 in groups of 32; "
                        "with --compile on a CPU, decoding streams a quarter / an eighth of fp32's bytes (on CUDA "
                        "it is slower than bf16: the weights are dequantised before cuBLAS's matmul)")
    args = p.parse_args(argv)
    check_numbers(p, args, FLAG_RULES)
    try:
        check_temperature(args.temperature)
    except SampleError as e:
        p.error(f"--{e}")
    return args


FLAG_RULES = {"max_new_tokens": Number(1), "num_samples": Number(1), "top_k": Number(0), "seed": Number(0),
              "top_p": Number(0, 1, above=True), "temperature": Number(0), "score_chat": Number(1)}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        device = parse_device(args.device)
        text = text_argument(args.prompt)
        ckpt, loaded = load_for_sampling(args, device)
        model, tokenizer, bos, eos_ids, dtype = (loaded.model, loaded.tokenizer, loaded.bos_id, loaded.eos_ids,
                                                 loaded.dtype)
        if args.chat or args.score_chat:
            run_chat(model, tokenizer, ckpt, args, new_seed() if args.seed is None else args.seed)
            return 0
        prompt = [bos] + tokenizer.encode(text, allow_special=True)  # chat tokens may be typed
        tail, first_allowed = b"", None
        if args.token_healing:
            prompt, tail, first_allowed = heal_prompt(tokenizer, prompt)
        check_fits(model, len(prompt), args.max_new_tokens)
        seed = new_seed() if args.seed is None else args.seed
        healing = f"; token healing regenerates {tail.decode('utf-8', errors='replace')!r}" if tail else ""
        print(f"{ckpt}: {model.num_params():,} parameters, {dtype} on {device}; prompt {len(prompt)} tokens"
              f"{healing}; seed {seed}", file=sys.stderr)
        result = run_and_print(model, tokenizer, text, prompt, args, seed, eos_ids, tail=tail,
                               first_allowed=first_allowed)
    except (SampleError, CheckpointError, InputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C while streaming: stop without a traceback
        print("\ninterrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader left (`| head`); point stdout at /dev/null so the exit flush is quiet
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    print(f"prefill: {result.prompt_tokens} tokens at {result.prefill_tokens_per_s:.1f} tokens/s | "
          f"decode: {sum(map(len, result.tokens))} tokens in {len(result.tokens)} sample(s) at "
          f"{result.decode_tokens_per_s:.1f} tokens/s"
          + (f" (after {result.compile_seconds:.1f} s compiling)" if result.compile_seconds else ""), file=sys.stderr)
    return 0


def load_for_sampling(args: argparse.Namespace, device: torch.device) -> tuple[Path, Checkpoint]:
    """--ckpt (default: the SFT export for --chat / --score-chat where train.py made one, else the base export),
    loaded in --dtype and, with --quantize, in int8 / int4; eager fp32 decoding on a CPU gets column-major weights,
    and on a CPU every weight ends in 2 MB pages (`huge_pages`)."""
    chat = args.chat or args.score_chat
    ckpt = Path(args.ckpt or (DEFAULT_CHAT_CKPT if chat and Path(DEFAULT_CHAT_CKPT).is_dir() else DEFAULT_CKPT))
    loaded = open_checkpoint(ckpt, args.tokenizer, device,
                             args.dtype or default_dtype(device, args.compile, args.quantize))
    if args.quantize:
        if device.type == "cuda":  # dequantised before cuBLAS's matmul (NOTES.md)
            print(f"note: {args.quantize} weights decode slower than bf16 on CUDA (they are meant for CPUs)",
                  file=sys.stderr)
        (quantize_int8 if args.quantize == "int8" else quantize_int4)(loaded.model)
    elif streams_column_major(device, loaded.dtype, args.compile, args.num_samples):
        column_major(loaded.model)
    huge_pages(loaded.model)
    return ckpt, loaded


def run_and_print(model: Fox, tokenizer: Tokenizer, text: str, prompt: list[int], args: argparse.Namespace,
                  seed: int, eos_ids: list[int], *, tail: bytes = b"",
                  first_allowed: list[int] | None = None) -> Generation:
    """Generate; one sample streams to stdout token by token, several are printed one after another.
    tail / first_allowed: the prompt's healed last token (`heal_prompt`); its bytes, shown with the
    prompt, are not printed again."""
    streaming = args.num_samples == 1
    stream = TextStream(tokenizer, already_shown=tail, show_special=args.show_special)

    def print_token(ids: list[int]) -> None:  # a single row stops at its <eos>, the last token it is given
        if stream.first:  # the prompt, once the model has produced something (a damaged one prints nothing)
            sys.stdout.write(text)
        if ids[0] not in eos_ids:
            sys.stdout.write(stream.push(ids[0]))
        sys.stdout.flush()

    result = generate(model, [prompt] * args.num_samples, args.max_new_tokens, temperature=args.temperature,
                      top_k=args.top_k or None, top_p=args.top_p, seed=seed, eos_id=eos_ids,
                      vocab_limit=tokenizer.vocab_size, compile=args.compile, first_allowed=first_allowed,
                      on_token=print_token if streaming else None)
    if streaming:
        sys.stdout.write(stream.finish() + "\n")
    else:
        for row, tokens in enumerate(result.tokens):
            shown = tokens if args.show_special else [t for t in tokens if t not in tokenizer.special_ids]
            continuation = tokenizer.decode_bytes(shown)[len(tail):].decode("utf-8", errors="replace")
            sys.stdout.write(f"--- sample {row} (seed {seed + row}) ---\n{text}{continuation}\n")
    sys.stdout.flush()
    return result
