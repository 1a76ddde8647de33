"""
Fox-1 pre-training: the 3-stage curriculum (arXiv 2411.05281, sequence length 2K -> 4K -> 8K with rising
data quality) on FSDP2, with exact resume.

    python train.py                                   # the whole pipeline on a laptop CPU (preset tiny)
    torchrun --nproc_per_node=8 train.py --preset fox-1.6b --data DATA --stage 1   # one stage on 8 GPUs

    torchrun --nproc_per_node=8 train.py --preset fox-1.6b --stage sft --init Fox-1-1.6B --data chat/

With no arguments it trains a byte-level BPE tokenizer on this Python's standard library (if out/ has none),
prepares the built-in corpus and conversations (data.py), trains `tiny` through stages 1 -> 2 -> 3 (256 -> 512
-> 1024 tokens) and then the instruction-tuning stage (sft), evaluates each stage, and leaves checkpoints under
out/stage{1,2,3}/ and out/sft/, the base model as a Hugging Face folder in out/export/ and the chat model in
out/export-sft/.

How it maps to the paper and why it is built this way:
  * Stages. Stage S starts from stage S-1's final checkpoint (weights AND AdamW moments: the curriculum is one
    continuous run cut in three, so dropping the moments would cause a loss spike) and trains on windows of its
    own length from its own mixture. A stage that has a checkpoint of its own resumes from it instead.
  * SFT (Fox-1-Instruct: the base model fine-tuned on 5B tokens of instructions and conversations). It starts
    from stage 3's final checkpoint, or with --init from any Llama-format folder, trains only on the assistant's
    reply tokens (data.ChatLoader packs whole conversations), and has its own budget and schedule.
  * Schedule: warmup-stable-decay (WSD), not cosine. A cosine spans the whole 3T-token run, so the learning rate
    of a stage would depend on budgets decided up front; WSD holds the peak through stages 1-2 and decays
    linearly to 10% during stage 3, so the annealing coincides with the highest-quality data (the recipe
    MiniCPM showed works well for data curricula) and any stage can be lengthened without replanning the rest.
  * Batch. A fixed token budget per optimizer step whatever the sequence length (tiny: 4096 tokens = 16 x 256,
    then 8 x 512, then 4 x 1024), split over ranks and gradient-accumulation micro-steps. The loss is the mean
    over every counted target token of the global batch, so 1 process x 2 micro-steps equals 2 processes x 1.
  * Parallelism: `fully_shard` (FSDP2) on every block and on the root, which holds the tied embedding / LM
    head as one unit; bf16 compute over fp32 master weights with fp32 gradient reduction where bf16 is native
    (CUDA, CPUs with AVX512-BF16 or AMX; --no-bf16 for fp32). Per-block torch.compile and activation
    checkpointing are options. A plain `python train.py` is a 1-process group.
  * Checkpoints: torch.distributed.checkpoint (sharded; reloadable at another world size), written to
    step_N.tmp/ and renamed, then `latest` is replaced: a kill at any moment leaves the previous one intact.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed._composable import checkpoint as activation_checkpoint
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, set_model_state_dict
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from tqdm import tqdm

import data
from fox1.checkpoints import (MetricsLog, latest_checkpoint, load_checkpoint, point_latest_at, read_checkpoint_meta,
                              save_checkpoint)
from fox1.distributed import Dist, StopFlag, global_mean
from fox1.files import write_atomic
from fox1.machine import gpu_peak_flops
from fox1.speed import native_bf16
from model import IGNORE_INDEX, Fox, FoxConfig
from fox1.chat_template import DEFAULT_CHAT_TEMPLATE
from tokenizer import load_tokenizer


# --------------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a run besides the model shape. Presets below; flags override fields."""

    preset: str = "tiny"
    out: str = "out"
    data: str | None = None  # a data.py root of prepared sources; None = the built-in corpus under out/data
    sources: str | None = None  # comma list, broadest to highest quality; None = every source under `data`
    tokenizer: str | None = None  # None = out/tokenizer.txt (trained on the built-in corpus if missing)
    total_tokens: int = 1_000_000  # the whole 3-stage budget, split by data.curriculum
    tokens_per_step: int = 4096  # global batch, constant across stages
    micro_batch_tokens: int = 4096  # per rank per forward: bounds activation memory
    lr: float = 1e-3  # tiny: chosen from a sweep of 1e-3 / 2e-3 / 4e-3 (NOTES.md)
    min_lr_ratio: float = 0.1  # WSD ends stage 3 at lr * 0.1
    warmup_steps: int = 10
    weight_decay: float = 0.1
    beta2: float = 0.95
    grad_clip: float = 1.0
    seed: int = 1337
    max_steps: int | None = None  # per stage; None = the stage's token budget / tokens_per_step
    eval_every: int = 50
    eval_batches: int = 4
    save_every: int = 100
    keep: int = 2  # checkpoints kept per stage
    resume_from: str | None = None  # a step_* checkpoint directory: re-point its stage's `latest` at it
    log_every: int = 10
    compile: bool | None = None  # None = on for CUDA, off for CPU (a cold compile costs ~20 s per shape there)
    activation_checkpointing: bool = False
    # bf16 compute, fp32 master weights and reductions. None: where matmuls run bf16 natively (CUDA, CPUs with
    # AVX512-BF16 or AMX); the same losses as fp32 to a fraction of a percent, faster (NOTES.md)
    bf16: bool | None = None
    # The instruction-tuning stage (--stage sft): its own budget (window tokens, padding included) and schedule.
    init: str | None = None  # start SFT from this Llama-format folder instead of stage 3's final checkpoint
    # tiny: ~1.1 epochs of the built-in conversations, enough for replies to end with <end_of_turn> (NOTES.md)
    sft_tokens: int = 360_000
    sft_lr: float = 2e-3  # tiny: 1e-3 learned slower (NOTES.md)
    sft_warmup_steps: int = 4
    sft_seq_len: int | None = 512  # None = the model's context; the built-in conversations are ~100 tokens


TRAIN_PRESETS: dict[str, TrainConfig] = {
    # ~1M tokens: about 10 minutes on a 2-core CPU.
    "tiny": TrainConfig(),
    # 52M parameters, ~20 tokens per parameter (Chinchilla).
    "small": TrainConfig(preset="small", total_tokens=1_000_000_000, tokens_per_step=131072,
                         micro_batch_tokens=16384, lr=1e-3, warmup_steps=200, eval_every=500, save_every=1000,
                         sft_tokens=20_000_000, sft_lr=1e-4, sft_warmup_steps=20),
    # The released model: 3T tokens; 4M tokens per step (Llama's batch; the paper does not state its own).
    "fox-1.6b": TrainConfig(preset="fox-1.6b", total_tokens=3_000_000_000_000, tokens_per_step=4 * 2**20,
                            micro_batch_tokens=16384, lr=4e-4, warmup_steps=2000, eval_every=1000,
                            save_every=1000, eval_batches=16, activation_checkpointing=True,
                            # Fox-1-Instruct: 5B tokens of instructions and conversations (paper); lr not stated
                            sft_tokens=5_000_000_000, sft_lr=2e-5, sft_warmup_steps=100, sft_seq_len=None),
}
SFT = 4  # the instruction-tuning stage (--stage sft) comes after the 3 pre-training stages


class TrainError(RuntimeError):
    """A run that cannot go on (bad config, non-finite loss). The message is one line for the user."""


# --------------------------------------------------------------------------------------------------
# The schedule and one optimizer step


def learning_rate(cfg: TrainConfig, stage: int, step: int, stage_steps: int) -> float:
    """Warmup-stable-decay: linear warmup over the first steps of stage 1, the peak through stages 1-2,
    a linear decay to min_lr_ratio x peak across stage 3. SFT has its own: a short warmup to sft_lr, then a
    linear decay to min_lr_ratio x sft_lr (a new, small dataset: no long stable phase)."""
    if stage == SFT:
        if step < cfg.sft_warmup_steps:
            return cfg.sft_lr * (step + 1) / cfg.sft_warmup_steps
        decayed = (step + 1 - cfg.sft_warmup_steps) / max(1, stage_steps - cfg.sft_warmup_steps)
        return cfg.sft_lr * (1 - (1 - cfg.min_lr_ratio) * decayed)
    if stage == 1 and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if stage == 3:
        return cfg.lr * (1 - (1 - cfg.min_lr_ratio) * (step + 1) / stage_steps)
    return cfg.lr


def train_step(model: Fox, optimizer, batches: list[data.Batch], lr: float, cfg: TrainConfig, env: Dist
               ) -> tuple[float, float]:
    """One optimizer step over this rank's micro-batches. Returns (global mean loss, grad norm).

    Each micro-loss is weighted by its share of the global count of target tokens, so the gradient is the
    exact token mean over the whole global batch however it is split. FSDP averages gradients over ranks,
    hence the world_size factor."""
    counts = [int((b.targets != IGNORE_INDEX).sum()) for b in batches]  # on the CPU: no device sync
    total = torch.tensor(float(sum(counts)), dtype=torch.float64, device=env.device)
    dist.all_reduce(total)
    total_count = total.item()
    loss_sum = torch.zeros((), dtype=torch.float64, device=env.device)
    for i, (batch, count) in enumerate(zip(batches, counts)):
        model.set_requires_gradient_sync(i == len(batches) - 1)  # reduce-scatter once, after the last micro-step
        loss = batch_loss(model, batch, env.device)
        (loss * (count / total_count * env.world_size)).backward()
        loss_sum += loss.detach().double() * count
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    dist.all_reduce(loss_sum)
    mean_loss = loss_sum.item() / total_count
    return mean_loss, float(grad_norm)


def batch_loss(model: Fox, batch: data.Batch, device: torch.device) -> torch.Tensor:
    """Mean loss over the batch's counted targets, each document attending only to itself."""
    b = batch.to(device)
    return model(b.inputs, b.targets, position_ids=b.position_ids, doc_ids=b.doc_ids)


@torch.no_grad()
def evaluate(model: Fox, batches: list[data.Batch], env: Dist) -> float:
    model.eval()
    losses = [batch_loss(model, b, env.device).item() for b in batches]
    model.train()
    return global_mean([sum(losses) / len(losses)], env)[0]


# --------------------------------------------------------------------------------------------------
# Training one stage


def train_stage(stage: data.Stage, model: Fox, optimizer, model_config: FoxConfig, cfg: TrainConfig,
                env: Dist, data_root: Path, fingerprint: str, stop: StopFlag) -> float | None:
    """Train one stage to its last step (resuming if it has a checkpoint). Returns the final eval loss, or
    None when stopped early by SIGTERM or Ctrl-C (after saving a checkpoint)."""
    run = setup_stage(stage, model, optimizer, model_config, cfg, env, data_root, fingerprint)
    if not isinstance(run, StageRun):
        return run  # already complete
    steps, step, eval_loss = run.plan.steps, run.step, None
    bar = tqdm(total=steps, initial=step, desc=stage_label(stage.number), unit="step", disable=not env.is_main,
               dynamic_ncols=True)
    batches = iter(run.loader)
    while step < steps:
        lr = learning_rate(cfg, stage.number, step, steps)
        started = time.perf_counter()
        loss, grad_norm = train_step(model, optimizer, [next(batches) for _ in range(run.plan.accumulation)], lr,
                                     cfg, env)
        step += 1
        log_step(run, model, step, loss, lr, grad_norm, time.perf_counter() - started, cfg, env, bar)
        last = step == steps
        if step % cfg.eval_every == 0 or last:
            eval_loss = evaluate(model, run.eval_set, env)
            if not math.isfinite(eval_loss):
                raise TrainError(f"{stage_label(stage.number)} step {step}: eval loss is {eval_loss}: the weights are "
                                 f"no longer finite; stopping. The last good checkpoint is "
                                 f"{latest_checkpoint(run.directory) or 'none'}")
            run.log.write(stage=stage.number, step=step, eval_loss=eval_loss)
            if env.is_main:
                tqdm.write(f"{stage_label(stage.number)} step {step:>6} | eval loss {eval_loss:.4f}")
        stop_now = global_mean([float(stop.requested)], env)[0] > 0  # every rank stops at the same step
        if step % cfg.save_every == 0 or last or stop_now:
            meta = {"preset": cfg.preset, "model_config": asdict(model_config), "stage": stage.number, "step": step,
                    "stage_steps": steps, "complete": last, "eval_loss": eval_loss, "world_size": env.world_size,
                    "tokens": run.tokens,
                    "loader": run.loader.state_dict(), "train_config": asdict(cfg)}
            save_checkpoint(model, optimizer, meta, run.directory, env, cfg.keep)
        if stop_now:
            break
    bar.close()
    run.log.close()
    return eval_loss if step == steps else None


@dataclass
class StagePlan:
    stage: data.Stage
    steps: int
    micro_batch: int  # windows per rank per micro-step
    accumulation: int  # micro-steps per optimizer step


def plan_stage(stage: data.Stage, cfg: TrainConfig, env: Dist) -> StagePlan:
    """Split the global token batch into ranks x micro-steps x windows, refusing sizes that do not divide."""
    windows = cfg.tokens_per_step // stage.seq_len
    per_micro = max(1, cfg.micro_batch_tokens // stage.seq_len)
    if cfg.tokens_per_step % stage.seq_len or windows % env.world_size:
        raise TrainError(f"tokens_per_step {cfg.tokens_per_step} must be a multiple of seq_len {stage.seq_len} x "
                         f"world size {env.world_size} (stage {stage.number})")
    per_rank = windows // env.world_size
    micro_batch = math.gcd(per_rank, per_micro)
    steps = cfg.max_steps if cfg.max_steps is not None else max(1, stage.tokens // cfg.tokens_per_step)
    return StagePlan(stage, steps, micro_batch, per_rank // micro_batch)


@dataclass
class StageRun:
    """What the training loop of one stage works with, set up (and resumed) by `setup_stage`."""

    plan: StagePlan
    directory: Path
    loader: data.Loader | data.ChatLoader
    eval_set: list[data.Batch]
    step: int  # optimizer steps already done: 0, or the resumed checkpoint's
    tokens: int  # tokens trained on so far in this stage (steps may have had other batch sizes before a resume)
    log: MetricsLog


def setup_stage(stage: data.Stage, model: Fox, optimizer, model_config: FoxConfig, cfg: TrainConfig, env: Dist,
                data_root: Path, fingerprint: str) -> StageRun | float:
    """Data, resume point and log of one stage; or, when its checkpoint says it is complete, its eval loss."""
    plan = plan_stage(stage, cfg, env)
    directory = stage_dir(cfg, stage.number)
    directory.mkdir(parents=True, exist_ok=True)
    loader, eval_set = open_stage_data(stage, plan, cfg, env, data_root, fingerprint)
    step = tokens = 0
    resume = latest_checkpoint(directory)
    if resume is not None:
        meta = read_checkpoint_meta(resume, model_config)
        load_checkpoint(model, optimizer, resume, env)
        step = meta["step"]
        tokens = meta.get("tokens", step * meta["train_config"]["tokens_per_step"])  # older checkpoints: no total
        if meta["complete"]:  # its loader state is not needed (and may be of an older data layout)
            if env.is_main:
                tqdm.write(f"{stage_label(stage.number)}: already complete at {resume} "
                           f"(eval loss {meta['eval_loss']:.4f})")
            return meta["eval_loss"]
        if step >= plan.steps:
            raise TrainError(f"{resume} is at step {step}, not before this run's last step {plan.steps}; "
                             f"raise --max-steps to continue it")
        loader.load_state_dict(meta["loader"])
    if env.is_main:
        describe_stage(plan, loader, cfg, env, step)
    return StageRun(plan, directory, loader, eval_set, step, tokens, MetricsLog(directory, env.rank, step))


def open_stage_data(stage: data.Stage, plan: StagePlan, cfg: TrainConfig, env: Dist, data_root: Path,
                    fingerprint: str) -> tuple[data.Loader | data.ChatLoader, list[data.Batch]]:
    """(training stream, fixed validation batches): packed documents, or packed conversations for SFT."""
    shape = dict(rank=env.rank, world_size=env.world_size, fingerprint=fingerprint)
    if stage.number == SFT:
        sources = sorted(stage.mixture)
        return (data.ChatLoader(data_root, sources, stage.seq_len, plan.micro_batch, seed=cfg.seed, **shape),
                data.chat_eval_batches(data_root, sources, stage.seq_len, plan.micro_batch,
                                       max_batches=cfg.eval_batches, **shape))
    return (data.Loader(data_root, stage, plan.micro_batch, seed=cfg.seed, **shape),
            data.eval_batches(data_root, stage, plan.micro_batch, max_batches=cfg.eval_batches, **shape))


def log_step(run: StageRun, model: Fox, step: int, loss: float, lr: float, grad_norm: float, seconds: float,
             cfg: TrainConfig, env: Dist, bar: tqdm) -> None:
    """metrics.jsonl row, progress bar and log line of a step; a non-finite loss stops the run."""
    stage = run.plan.stage
    if not math.isfinite(loss):
        raise TrainError(f"{stage_label(stage.number)} step {step}: loss is {loss}; stopping. The last good "
                         f"checkpoint is {latest_checkpoint(run.directory) or 'none (this stage has not saved yet)'}")
    tokens_per_s, peak = cfg.tokens_per_step / seconds, gpu_peak_flops(env.device)
    run.tokens += cfg.tokens_per_step
    row = {"stage": stage.number, "step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm,
           "tokens_per_s": tokens_per_s, "tokens": run.tokens}
    if peak:
        row["mfu"] = model.flops_per_token(stage.seq_len) * tokens_per_s / (peak * env.world_size)
    run.log.write(**row)
    bar.update(1)
    bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.1e}", tok_s=f"{tokens_per_s:,.0f}")
    if env.is_main and (step % cfg.log_every == 0 or step == 1):
        tqdm.write(f"{stage_label(stage.number)} step {step:>6}/{run.plan.steps} | loss {loss:.4f} | lr {lr:.2e} | "
                   f"grad {grad_norm:.3f} | {tokens_per_s:,.0f} tok/s" + (f" | MFU {row['mfu']:.1%}" if peak else ""))


def describe_stage(plan: StagePlan, loader: data.Loader | data.ChatLoader, cfg: TrainConfig, env: Dist,
                   step: int) -> None:
    stage = plan.stage
    docs = "conversations" if stage.number == SFT else "docs"  # SFT cuts a conversation at a turn boundary
    packing = "; ".join(f"{name} {s.windows:,} windows/epoch, {s.docs_per_window:.1f} {docs}/window, "
                        f"{s.documents_cut:,} of {s.documents:,} {docs} cut" for name, s in loader.stats.items())
    tqdm.write(f"{stage_label(stage.number)}: seq_len {stage.seq_len}, {plan.steps} steps of {cfg.tokens_per_step} "
               f"tokens "
               f"({env.world_size} rank(s) x {plan.accumulation} micro-steps x {plan.micro_batch} windows)"
               + (f", resuming at step {step}" if step else "")
               + f"\n  mixture {stage.mixture}\n  packing: {packing}")


# --------------------------------------------------------------------------------------------------
# Process group, model, optimizer; where a stage starts; the export


def build_model(model_config: FoxConfig, cfg: TrainConfig, env: Dist) -> Fox:
    """The same initial weights on every rank (same seed, built on the target device), then sharded, so a
    run's weights do not depend on the world size (a transient 6.7 GB per GPU for fox-1.6b in fp32).

    Order matters: activation checkpointing and compile wrap each block first, FSDP2 shards last."""
    torch.manual_seed(cfg.seed)
    with env.device:
        model = Fox(model_config)
    use_compile = cfg.compile if cfg.compile is not None else env.device.type == "cuda"
    bf16 = cfg.bf16 if cfg.bf16 is not None else native_bf16(env.device)
    # FSDP2 casts each unit's fp32 weights to bf16 for its forward and backward; AdamW updates the fp32 copy
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if bf16 else torch.float32, reduce_dtype=torch.float32)
    for layer in model.layers:
        if cfg.activation_checkpointing:
            activation_checkpoint(layer)
        if use_compile:
            layer.compile()
        fully_shard(layer, mp_policy=policy)
    fully_shard(model, mp_policy=policy)  # the root unit: embedding = LM head, final norm
    return model


def build_optimizer(model: Fox, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (norm gains are scales, decaying them toward 0 only hurts).
    Fused: one kernel reads each parameter, gradient and moment once, on CPUs too."""
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    gains = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": matrices, "weight_decay": cfg.weight_decay}, {"params": gains, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, cfg.beta2), eps=1e-8, fused=True)


def stage_dir(cfg: TrainConfig, stage: int) -> Path:
    return Path(cfg.out) / ("sft" if stage == SFT else f"stage{stage}")


def export_dir(cfg: TrainConfig, chat: bool) -> Path:
    return Path(cfg.out) / ("export-sft" if chat else "export")


def stage_label(stage: int) -> str:
    return "sft" if stage == SFT else f"stage {stage}"


def start_stage(stage: int, model: Fox, optimizer, model_config: FoxConfig, cfg: TrainConfig, env: Dist) -> None:
    """A stage without a checkpoint of its own begins from the previous stage's final checkpoint (weights and AdamW
    moments): stage S from S-1, SFT from stage 3, or, with --init, SFT from a Llama-format folder."""
    if stage == 1:
        return
    if stage == SFT and cfg.init:
        start_from_folder(Path(cfg.init), model, env)
        return
    previous = 3 if stage == SFT else stage - 1
    checkpoint = latest_checkpoint(stage_dir(cfg, previous))
    if checkpoint is None:
        raise TrainError(f"{stage_label(stage)} starts from stage {previous}'s final checkpoint, but "
                         f"{stage_dir(cfg, previous)} has none; run --stage {previous} first"
                         + (" (or start from a model folder with --init DIR)" if stage == SFT else ""))
    meta = read_checkpoint_meta(checkpoint, model_config)
    if not meta["complete"]:
        raise TrainError(f"stage {previous} is not finished ({checkpoint.name} of {meta['stage_steps']} steps); "
                         f"run --stage {previous} to completion first")
    load_checkpoint(model, optimizer, checkpoint, env)
    if env.is_main:
        tqdm.write(f"{stage_label(stage)}: starting from {checkpoint}")


def start_from_folder(folder: Path, model: Fox, env: Dist) -> None:
    """--init: every rank reads the folder's full weights (our export, or the released Fox-1) and keeps its
    shard; the optimizer starts with empty moments, as fine-tuning a released model does."""
    state = Fox.from_pretrained(folder).state_dict()
    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))
    if env.is_main:
        tqdm.write(f"sft: starting from the weights in {folder}")


def export_hf(model: Fox, model_config: FoxConfig, tokenizer_path: Path, cfg: TrainConfig, env: Dist,
              chat_template: str | None = None) -> Path:
    """Gather the full weights on rank 0 and write a complete Hugging Face model folder: out/export/ after a
    pre-training stage, out/export-sft/ after SFT (given its chat_template), so the base model stays beside the
    chat model. config.json (with our bos/eos/pad ids) + generation_config.json (eos: <eos>, and for the chat
    model also the token that closes a reply, as Gemma's lists both) + model.safetensors, the tokenizer as
    tokenizer.json + tokenizer_config.json (with the chat template) + special_tokens_map.json, and our own
    tokenizer.txt."""
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    export = export_dir(cfg, chat=chat_template is not None)
    if env.is_main:
        with torch.device("meta"):
            plain = Fox(model_config)
        plain.load_state_dict(state, assign=True)
        if env.device.type == "cuda":
            plain = plain.to(torch.bfloat16)  # what the GPU computed in, and the released model's dtype
        tokenizer = load_tokenizer(tokenizer_path)
        ids = {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id, "pad_token_id": tokenizer.pad_id}
        stop_ids = data.chat_stop_ids(tokenizer, chat_template) if chat_template else None
        plain.save_pretrained(export, token_ids=ids, tokenizer_fingerprint=tokenizer.fingerprint, stop_ids=stop_ids)
        tokenizer.save_pretrained(export, chat_template=chat_template or DEFAULT_CHAT_TEMPLATE)
        if tokenizer_path.suffix == ".txt":
            write_atomic(export / "tokenizer.txt", tokenizer_path.read_bytes())
    dist.barrier()
    return export


# --------------------------------------------------------------------------------------------------
# The pipeline


@dataclass(frozen=True)
class Inputs:
    tokenizer_path: Path
    data_root: Path
    sources: list[str]  # document sources of the pre-training stages, broadest first
    chat_sources: list[str]  # conversation sources of the SFT stage


def stage_table(model_config: FoxConfig, cfg: TrainConfig, inputs: Inputs) -> dict[int, data.Stage]:
    """The 3 curriculum stages (data.curriculum) and SFT: its own length, budget and conversation sources."""
    table = {}
    if inputs.sources:
        table = {stage.number: stage for stage in data.curriculum(model_config.context_len, cfg.total_tokens,
                                                                   inputs.sources)}
    if inputs.chat_sources:
        share = 1 / len(inputs.chat_sources)  # a union of the sources' conversations, not a weighted mixture
        table[SFT] = data.Stage(SFT, cfg.sft_seq_len or model_config.context_len, cfg.sft_tokens,
                                {name: share for name in inputs.chat_sources})
    return table


def run_stages(cfg: TrainConfig, stages: list[int], inputs: Inputs, env: Dist, stop: StopFlag
               ) -> dict[int, float | None]:
    """Train the stages in order, each from the one before, exporting after each: {stage: final eval loss}. A
    stage stopped by SIGTERM or Ctrl-C has None (its checkpoint is saved) and is the last one run."""
    model = optimizer = None
    try:
        tokenizer = load_tokenizer(inputs.tokenizer_path)
        model_config = (FoxConfig.from_hf(Path(cfg.init) / "config.json")[0] if cfg.init
                        else FoxConfig.from_preset(cfg.preset, vocab_size=tokenizer.vocab_size))
        plan = stage_table(model_config, cfg, inputs)
        model = build_model(model_config, cfg, env)
        optimizer = build_optimizer(model, cfg)
        if env.is_main:
            tqdm.write(f"fox1 {cfg.preset}: {model.num_params():,} parameters, vocab {model_config.vocab_size}, "
                       f"{env.world_size} process(es) on {env.device.type}")
        if cfg.resume_from and env.is_main:
            point_latest_at(Path(cfg.resume_from))
        dist.barrier()
        results = {}
        for number in stages:
            if latest_checkpoint(stage_dir(cfg, number)) is None:
                start_stage(number, model, optimizer, model_config, cfg, env)
            results[number] = train_stage(plan[number], model, optimizer, model_config, cfg, env, inputs.data_root,
                                          tokenizer.fingerprint, stop)
            if results[number] is None:
                return results
            template = data.ChatSplit(inputs.data_root, inputs.chat_sources[0], "train").template \
                if number == SFT else None  # the one the conversations were rendered with
            export_hf(model, model_config, inputs.tokenizer_path, cfg, env, chat_template=template)
        return results
    finally:
        del model, optimizer  # FSDP2 on CPU can abort at exit if these outlive the process group


if __name__ == "__main__":
    from cli.train import main  # flags, the lock on --out, data made on first use, the summary

    sys.exit(main())
