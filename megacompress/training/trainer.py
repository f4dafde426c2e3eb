"""The training loop: GPT + data + DeepSpeed ZeRO engine, checkpoints, metrics, signals.

One optimizer step ``k`` consumes a global batch of ``G_k`` sequences (`BatchSizeRamp`),
split into ``G_k / (micro x DP)`` micro batches per DP rank (the gradient-accumulation
count, which DeepSpeed learns through ``set_train_batch_size``). The accumulation boundary
is set explicitly on every micro batch, because DeepSpeed's own counter
(``micro_steps % gas``) goes out of phase when ``gas`` changes during a ramp.

Loss normalisation (Megatron's per-token rule): the step's loss is the sum of the token
losses of the whole global batch divided by its labelled tokens (labels != -100, counted
over all accumulation steps and DP ranks before the first forward). Each micro batch
backpropagates ``loss_sum * DP / N_global`` with DeepSpeed's per-accumulation scaling
off; DeepSpeed's mean over DP then leaves exactly d(sum / N_global). So the gradient of
a global batch does not depend on the micro batch size or the DP size, also when samples
carry different numbers of labels (padding, loss masks).

Equivalences the tests rely on: DP=d with micro batch m and DP=1 with d accumulation
steps of m see the same micro batches (the sampler gives DP rank r the r-th block of
each global batch), so their losses agree to float rounding; TP=k equals TP=1 because
the model's initialisation and loss are TP-invariant. On CPU everything is fp32 and
deterministic, so a resumed run repeats an uninterrupted one bit for bit.
"""

from __future__ import annotations

import json
import os
import socket
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from megacompress import cli
from megacompress.data.builder import build_datasets
from megacompress.data.collate import collate
from megacompress.data.registry import dataset_batch_keys
from megacompress.data.sampler import DataParallelSampler
from megacompress.data.tokenizers import build_tokenizer
from megacompress.models.flops import count_parameters, flops_per_token
from megacompress.models.config import ConfigError
from megacompress.models.registry import build_model, select_inputs
from megacompress.models.pretrained import load_weights
from megacompress.parallel import state
from megacompress.parallel.grads import grad_norm
from megacompress.progress import is_interactive, progress
from megacompress.atomic import write_text_atomic
from megacompress.training.checkpoint import (CheckpointError, CheckpointManager, TrainState,
                                              committed_tags, engine_precision, read_latest)
from megacompress.training.compile import apply_compile
from megacompress.training.config import OPTIMIZER_IMPLEMENTATIONS, TrainConfig, TrainConfigError
from megacompress.training.ds_config import build_ds_config
from megacompress.training.metrics import MetricsLogger, memory_stats, peak_flops
from megacompress.training.rng import get_rng_state, seed_everything, set_rng_state
from megacompress.training.run_lock import RunDirBusy, RunLock
from megacompress.training.schedules import BatchSizeRamp, WarmupDecayLR
from megacompress.training.recompute import apply_recompute
from megacompress.training.sequence_parallel import apply_sequence_parallel
from megacompress.training.signals import StopSignal

@dataclass
class TrainResult:
    """How `Trainer.train` ended: ``finished`` (all steps), ``stopped`` (``stop_at_step``)
    or ``signal`` (SIGTERM/SIGUSR2: checkpointed, the caller should exit `EXIT_REQUEUE`)."""

    reason: str
    step: int
    checkpoint: str | None
    history: list[dict[str, Any]]


def import_deepspeed():
    """Import DeepSpeed with its shared-memory comm kernel disabled.

    That kernel only speeds up CPU inference all-reduces, and DeepSpeed JIT-compiles it
    (~50 s, once per machine) in every ``TorchBackend``; training uses gloo/nccl directly.
    """
    import deepspeed
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    cli.quiet_library_warnings()  # torch's deprecation notices about DeepSpeed's calls, not ours
    return deepspeed


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices (ndim >= 2: linear and embedding weights), none on norms."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class Trainer:
    """Builds everything from a `TrainConfig` (collective: every rank constructs one).

    ``stop``: the SIGTERM/SIGUSR2 handler, installed by the caller as early as it can (a
    signal during start-up then still ends in a checkpoint and exit 75); one is made here if
    not given. Rank 0 holds the run directory's lock (`run_lock`) from here to the end of
    `train` (or until the object is collected)."""

    def __init__(self, config: TrainConfig, *, stop_at_step: int = 0, stop: StopSignal | None = None):
        self.config = config
        self.stop_at_step = stop_at_step
        self.stop = stop or StopSignal()
        _default_single_process_env()
        state.initialize(config.parallel.tensor_parallel_size)
        self.rank = state.get_rank()
        self.is_main = self.rank == 0
        self.locks = self._lock_run_dir()
        try:
            self._build(config)
        except BaseException:
            self.release_locks()  # a refused resume must not keep the directory locked
            raise

    def _build(self, config: TrainConfig) -> None:
        deepspeed = import_deepspeed()
        self.dp_size = state.get_data_parallel_world_size()
        self.dp_rank = state.get_data_parallel_rank()
        self.on_gpu = torch.cuda.is_available()
        seed_everything(config.seed)

        self.model_config = config.model.build()
        self.model_config.validate(state.get_tensor_parallel_world_size())
        self.seq_length = self.model_config.max_seq_len
        model = build_model(self.model_config, seed=config.seed)
        if config.model.init_from:  # fine-tuning; a resumed run then loads its checkpoint over it
            load_weights(model, config.model.init_from)
        apply_compile(model, config.parallel.compile)
        apply_recompute(model, config.parallel.recompute)
        apply_sequence_parallel(model, config.parallel.sequence_parallel)
        opt = config.optimizer
        optimizer = torch.optim.AdamW(parameter_groups(model, opt.weight_decay), lr=opt.lr,
                                      betas=(opt.beta1, opt.beta2), eps=opt.eps,
                                      **OPTIMIZER_IMPLEMENTATIONS[opt.implementation])
        s = config.schedule
        scheduler = WarmupDecayLR(optimizer, lr=opt.lr, min_lr=opt.min_lr, warmup_steps=s.warmup_steps,
                                  train_steps=s.train_steps, decay=s.decay)
        try:
            self.ramp = BatchSizeRamp.from_schedule(s, self.dp_size)
        except ValueError as exc:
            raise TrainConfigError(str(exc)) from None
        self.checkpoints = CheckpointManager(config.checkpoint_dir, config.checkpoint.keep_last)
        if self.is_main and (stale := self.checkpoints.remove_stale()):  # we hold the lock: nobody writes them
            warnings.warn(f"removed unfinished checkpoint writes of an earlier run: {', '.join(stale)}")
        source = self._resume_source()
        self.ds_config = build_ds_config(config, self.dp_size, on_gpu=self.on_gpu, global_batch_size=self.ramp(0),
                                         load_universal=source is not None and source[2])
        self.engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                                    mpu=state.mpu, config=self.ds_config)
        self.train_state = TrainState(step=0, consumed_samples=0, tokens_seen=0)
        self.resumed_from = self._resume(source)
        self.start_step = self.train_state.step

        tokenizer = build_tokenizer(config.tokenizer.kind, config.tokenizer.model_path or None)
        self.total_train_samples = sum(self.ramp(k) for k in range(s.train_steps))
        self.eval_samples = config.eval.iters * s.micro_batch_size * self.dp_size
        self.train_data, self.valid_data = self._build_datasets(tokenizer)
        self._check_batch_keys()
        self._check_data_made_for_model()
        self.metrics = MetricsLogger(config.run_dir, enabled=self.is_main, tensorboard=config.logging.tensorboard)
        self.metrics.write_config(config.to_dict())
        self.flops_per_token = flops_per_token(self.model_config, self.seq_length)
        self.peak_flops = config.parallel.peak_tflops * 1e12 or peak_flops()
        self.history: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ setup
    def _lock_run_dir(self) -> list[RunLock]:
        """Rank 0 locks RUN_DIR (and the checkpoint directory when it lies outside); every rank
        learns whether that worked (one all-reduce) and a busy directory is a user error on all."""
        locks, error = [], ""
        if self.is_main:
            run_dir, ckpt_dir = Path(self.config.run_dir).resolve(), Path(self.config.checkpoint_dir).resolve()
            dirs = [(run_dir, "logging.run_dir")]
            if run_dir != ckpt_dir and run_dir not in ckpt_dir.parents:
                dirs.append((ckpt_dir, "checkpoint.dir"))
            try:
                for directory, what in dirs:
                    lock = RunLock(directory, what)
                    note = lock.acquire()
                    locks.append(lock)
                    if note:
                        warnings.warn(note)
            except RunDirBusy as exc:
                for lock in locks:
                    lock.release()
                locks, error = [], str(exc)
        busy = torch.tensor([1 if error else 0], dtype=torch.int32)
        if state.get_world_size() > 1:
            dist.all_reduce(busy.cuda() if dist.get_backend() == "nccl" else busy, op=dist.ReduceOp.MAX)
        if error or busy.item():
            raise TrainConfigError(error or "rank 0 could not lock the run directory (see its error)")
        return locks

    def release_locks(self) -> None:
        for lock in self.locks:
            lock.release()
        self.locks = []

    def _build_datasets(self, tokenizer):
        cfg = self.config
        if tokenizer.vocab_size > self.model_config.vocab_size:
            raise TrainConfigError(f"tokenizer {tokenizer.name} has {tokenizer.vocab_size} tokens but "
                                   f"model.vocab_size is {self.model_config.vocab_size}")
        data = replace(cfg.data, cache_dir=cfg.data.cache_dir or str(cfg.run_dir / "index_cache"))
        if cfg.eval.data_path:
            train, _, _ = build_datasets(replace(data, split="1,0,0"), tokenizer, self.seq_length,
                                         [self.total_train_samples, 0, 0])
            _, valid, _ = build_datasets(replace(data, data_path=cfg.eval.data_path, split="0,1,0"), tokenizer,
                                         self.seq_length, [0, self.eval_samples, 0])
        else:
            train, valid, _ = build_datasets(data, tokenizer, self.seq_length,
                                             [self.total_train_samples, self.eval_samples, 0])
        return train, valid

    def _check_batch_keys(self) -> None:
        """Refuse, before the first step, data whose samples the model cannot take (names the keys)."""
        for split, dataset in (("train", self.train_data), ("valid", self.valid_data)):
            if dataset is not None:
                try:
                    select_inputs(self.model_config.architecture, dict.fromkeys(dataset_batch_keys(dataset)),
                                  source=f"the {split} data (data.kind={self.config.data.kind!r})")
                except ConfigError as exc:
                    raise TrainConfigError(str(exc)) from None

    def _check_data_made_for_model(self) -> None:
        """Refuse data formatted for another model (a dataset's ``made_for_model``, e.g. instruction shards
        of another model setting: the mask would silently follow the shard's); names the shard."""
        for split, dataset in (("train", self.train_data), ("valid", self.valid_data)):
            for part in getattr(dataset, "datasets", [dataset]):  # the shards of a blend, or the one
                for field, value in getattr(part, "made_for_model", {}).items():
                    if getattr(self.model_config, field) != value:
                        raise TrainConfigError(
                            f"{getattr(part, 'prefix', split)}: the {split} data was prepared for model.{field}={value} "
                            f"but the model has {field}={getattr(self.model_config, field)}")

    def _resume_source(self) -> tuple[Path, str, bool] | None:
        """(dir, tag, universal) to load: own ``latest`` first (a requeued run continues its own
        progress), else ``checkpoint.load_tag`` of the own directory, else ``checkpoint.load_dir``;
        None to start from scratch. Committed checkpoints of an earlier run that would not be
        resumed (``latest`` unusable, or ``resume=false``) refuse the start unless
        ``checkpoint.start_over`` (they are then moved aside, see `CheckpointManager.set_aside`)."""
        ck, root = self.config.checkpoint, self.checkpoints.root
        own_tag = ck.load_tag if ck.load_tag and not ck.load_dir else ""
        try:
            own = read_latest(root, how_to_resume="rerun with --set checkpoint.load_tag={tag}, or start over with "
                                                 "--set checkpoint.start_over=true (the earlier checkpoints are "
                                                 f"moved to {root}/superseded-TIME/)") if ck.resume else None
        except CheckpointError:
            if not (own_tag or ck.start_over):
                raise
            own = None
        if own:
            return root, own, False
        if own_tag:
            if not (root / own_tag).is_dir():
                raise TrainConfigError(f"checkpoint.load_tag {own_tag}: {root / own_tag} does not exist (committed "
                                       f"checkpoints there: {', '.join(committed_tags(root)) or 'none'})")
            return root, own_tag, False
        if committed_tags(root):
            if not ck.start_over:
                raise TrainConfigError(
                    f"checkpoint.resume=false, but {root} holds committed checkpoints of an earlier run (newest "
                    f"{committed_tags(root)[-1]}) that this run's saves would replace: use another logging.run_dir "
                    "or checkpoint.dir, or start over with --set checkpoint.start_over=true (they are moved to "
                    f"{root}/superseded-TIME/)")
        if ck.start_over:
            aside = self.checkpoints.set_aside() if self.is_main else None
            _barrier_all()
            if aside:
                warnings.warn(f"checkpoint.start_over: the earlier checkpoints of {root} were moved to {aside}")
        if ck.load_dir:
            load_dir = Path(ck.load_dir)
            pointer = "latest_universal" if ck.load_universal else "latest"
            return load_dir, ck.load_tag or _read_pointer(load_dir, pointer), ck.load_universal
        return None

    def _resume(self, source: tuple[Path, str, bool] | None) -> str | None:
        if source is None:
            return None
        load_dir, tag, universal = source
        self.train_state, rng = self.checkpoints.load(
            self.engine, load_dir, tag, model_config=self.model_config.to_dict(), train_config=self.config.to_dict(),
            universal=universal)
        set_rng_state(rng)
        # The LR follows the configured schedule at the saved step, not the saved run's.
        self.engine.lr_scheduler.set_step(self.train_state.step)
        return str(load_dir / tag)

    def _loader(self, dataset, total: int, consumed: int, batch_size) -> DataLoader:
        sampler = DataParallelSampler(total, consumed, self.config.schedule.micro_batch_size, batch_size,
                                      self.dp_rank, self.dp_size)
        return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=0)

    def _inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The model's forward() arguments on its device; a batch key it does not take is an error."""
        inputs = select_inputs(self.model_config.architecture, batch,
                               source=f"a batch of data.kind={self.config.data.kind!r}")
        return {k: v.to(self.engine.device) for k, v in inputs.items()}

    def _dp_sum(self, values: list[float | torch.Tensor]) -> list[float]:
        """Element-wise sum over the DP ranks (one all-reduce for all values)."""
        total = torch.tensor([float(v) for v in values], dtype=torch.float64)
        if self.dp_size > 1:
            if dist.get_backend() == "nccl":
                total = total.cuda()
            dist.all_reduce(total, group=state.get_data_parallel_group())
        return total.tolist()

    # ------------------------------------------------------------------ banner
    def _weights_origin(self) -> str:
        """Where the weights came from, for the banner: the resumed checkpoint and how the run began."""
        m = self.config.model
        if m.init_from:
            origin = f"weights from {m.init_from} (model.init_from)"
        else:
            overridden = f" with {len(m.overrides)} field(s) overridden" if m.overrides else ""
            origin = f"a random init of preset {m.preset}{overridden}"
        if self.resumed_from:
            return f"weights from {self.resumed_from} (resumed; the run started from {origin})"
        return origin

    def banner(self) -> str:
        c, s = self.config, self.config.schedule
        params = count_parameters(self.model_config)
        ramp = f"{s.ramp_start_batch_size} -> {s.global_batch_size} by step {self.ramp.ramp_steps}" \
            if s.ramp_start_batch_size else "off"
        lines = [
            "megacompress training",
            f"  world {state.get_world_size()} = TP {state.get_tensor_parallel_world_size()} x DP {self.dp_size}; "
            f"ZeRO stage {self.engine.zero_optimization_stage()}; "
            f"{engine_precision(self.engine)} on {self.engine.device}",
            f"  model {self.model_config.architecture} ({type(self.engine.module).__name__}), {params.total:,} "
            f"parameters ({params.total / 1e6:.1f} M), {self._weights_origin()}",
            f"  model config {self.model_config.to_dict()}",
            f"  parameters {params.total:,} ({params.non_embedding:,} non-embedding)",
            f"  batch: global {s.global_batch_size} seqs x {self.seq_length} tokens, micro {s.micro_batch_size}, "
            f"accumulation {self.engine.gradient_accumulation_steps()}, ramp {ramp}",
            f"  steps {s.train_steps} (warmup {s.warmup_steps}, {s.decay} decay), lr {c.optimizer.lr}",
            f"  data {c.data.data_path} ({c.data.kind}): {len(self.train_data):,} train samples, "
            f"{len(self.valid_data) if self.valid_data is not None else 0:,} valid samples",
            f"  run dir {c.run_dir}  checkpoints {self.checkpoints.root}",
            f"  resumed from {self.resumed_from} at step {self.train_state.step}" if self.resumed_from
            else "  starting from scratch",
        ]
        return "\n".join(lines)

    # ------------------------------------------------------------------ eval
    @torch.no_grad()
    def evaluate(self) -> float | None:
        """Validation loss per labelled token over ``eval.iters`` micro batches per DP rank
        (all ranks run it)."""
        if self.valid_data is None:
            return None
        self.engine.eval()
        loss_sum, labels = 0.0, 0
        for batch in self._loader(self.valid_data, self.eval_samples, 0, self.eval_samples):
            out = self.engine(**self._inputs(batch))
            loss_sum, labels = loss_sum + float(out.loss_sum), labels + int(out.num_labels)
        self.engine.train()
        loss_sum, labels = self._dp_sum([loss_sum, labels])
        return loss_sum / max(labels, 1)

    def _log_eval(self) -> float | None:
        loss = self.evaluate()
        if loss is not None:
            step = self.train_state.step
            self.metrics.log({"split": "valid", "step": step, "loss": loss, "ppl": float(torch.tensor(loss).exp())})
            self.metrics.say(f"validation loss {loss:.4f} (ppl {float(torch.tensor(loss).exp()):.2f}) at step {step}")
        return loss

    # ------------------------------------------------------------------ train
    def save(self) -> str:
        path = self.checkpoints.save(self.engine, self.train_state, model_config=self.model_config.to_dict(),
                                     train_config=self.config.to_dict(), rng_state=get_rng_state())
        return str(path)

    def train(self) -> TrainResult:
        cfg, s, st = self.config, self.config.schedule, self.train_state
        self.metrics.say(self.banner())
        if self.resumed_from:  # replayed steps after a requeue are told apart by this line
            self.metrics.log({"split": "event", "event": "resume", "step": st.step, "checkpoint": self.resumed_from})
        loader = iter(self._loader(self.train_data, self.total_train_samples, st.consumed_samples, self.ramp))
        stop = self.stop
        # A bar on a terminal; in a log file one plain line per log interval instead.
        show_bar = self.is_main and cfg.logging.progress_bar and is_interactive()
        bar = progress(total=s.train_steps, initial=st.step, desc="train", unit="step", enabled=show_bar)
        last_saved, reason = None, "finished"
        window = LogWindow()
        try:
            if stop.agreed():  # a signal during start-up: checkpoint now, as at a step boundary
                reason = "signal"
            while reason != "signal" and st.step < s.train_steps:
                record = self._train_step(loader)
                window.add(record, self.seq_length)
                if st.step % cfg.logging.log_interval == 0 or st.step == s.train_steps:
                    line = window.flush(record, self.flops_per_token, self.peak_flops, state.get_world_size())
                    self.metrics.log(line)
                    if not show_bar:
                        self.metrics.say(log_line(line, s.train_steps))
                self.history.append(record)
                bar.update(1)
                bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")
                if cfg.eval.interval and st.step % cfg.eval.interval == 0 and st.step < s.train_steps:
                    self._log_eval()
                if stop.agreed():
                    reason = "signal"
                    break
                if self.stop_at_step and st.step >= self.stop_at_step:
                    reason = "stopped"
                    break
                if cfg.checkpoint.interval and st.step % cfg.checkpoint.interval == 0:
                    last_saved = self.save()
        finally:
            bar.close()
            stop.restore()
        if reason == "finished":
            self._log_eval()
        if st.step == self.start_step and self.resumed_from:
            last_saved = self.resumed_from  # nothing new to save
        elif last_saved is None or not last_saved.endswith(f"global_step{st.step}"):
            last_saved = self.save()
        if reason != "finished":
            self.metrics.say(f"checkpoint saved at step {st.step} ({last_saved}); rerun the same command to resume")
        if self.is_main:
            _write_exit_status(cfg.run_dir, reason, st.step, last_saved, stop.received)
        self.metrics.close()
        self.release_locks()
        return TrainResult(reason, st.step, last_saved, self.history)

    def next_micro_batches(self, loader) -> list[dict[str, torch.Tensor]]:
        """This rank's micro batches of the next step (sets DeepSpeed's batch size for it)."""
        st, engine = self.train_state, self.engine
        batch_size = self.ramp(st.step)
        if batch_size != engine.train_batch_size():
            engine.set_train_batch_size(batch_size)
        try:
            return [next(loader) for _ in range(engine.gradient_accumulation_steps())]
        except StopIteration:
            raise RuntimeError(f"training data ran out at step {st.step} (consumed {st.consumed_samples} "
                               f"samples); the dataset was built for {self.total_train_samples}") from None

    def accumulate_gradients(self, micro_batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
        """Forward + backward of one global batch; the gradients are then final (all-reduced
        over DP) and the last ``engine.step()`` is the caller's. See the module docstring for
        the per-token scaling. Returns the global batch's loss sum, labelled and padding tokens."""
        engine = self.engine
        labelled = sum(int((b["labels"] != -100).sum()) for b in micro_batches)
        padding = sum(int((b["document_ids"] == -1).sum()) for b in micro_batches if "document_ids" in b)
        labelled, padding = self._dp_sum([labelled, padding])
        scale = self.dp_size / max(labelled, 1)
        loss_sum = 0.0
        for i, batch in enumerate(micro_batches):
            last = i == len(micro_batches) - 1
            engine.set_gradient_accumulation_boundary(last)
            out = engine(**self._inputs(batch))
            engine.backward(out.loss_sum * scale, scale_wrt_gas=False)
            loss_sum += float(out.loss_sum.detach())
            if not last:
                engine.step()  # bookkeeping only: not a boundary
        (loss_sum,) = self._dp_sum([loss_sum])
        return {"loss_sum": loss_sum, "labelled": int(labelled), "padding": int(padding)}

    def _train_step(self, loader) -> dict[str, Any]:
        st, engine = self.train_state, self.engine
        start = time.perf_counter()
        micro_batches = self.next_micro_batches(loader)
        batch_size = engine.train_batch_size()
        totals = self.accumulate_gradients(micro_batches)
        norm = None
        if engine.zero_optimization_stage() == 0:  # DeepSpeed keeps no norm without ZeRO
            norm = grad_norm(engine.module.parameters()).item()
        engine.step()
        if engine.zero_optimization_stage() > 0:
            norm = engine.get_global_grad_norm()
        lr = engine.get_lr()[0]
        st.step += 1
        st.consumed_samples += batch_size
        st.tokens_seen += totals["labelled"]
        return {"split": "train", "step": st.step, "loss": totals["loss_sum"] / max(totals["labelled"], 1),
                "lr": lr, "grad_norm": None if norm is None else float(norm), "global_batch_size": batch_size,
                "labelled_tokens": totals["labelled"],
                "padding_fraction": totals["padding"] / (batch_size * self.seq_length),
                "samples_seen": st.consumed_samples, "tokens_seen": st.tokens_seen,
                "step_time_s": time.perf_counter() - start}


class LogWindow:
    """Sums over the steps since the last metrics line (the line reports their means)."""

    def __init__(self):
        self.start = time.perf_counter()
        self.positions = self.loss_sum = self.labelled = self.steps = 0

    def add(self, record: dict[str, Any], seq_length: int) -> None:
        self.positions += record["global_batch_size"] * seq_length
        self.loss_sum += record["loss"] * record["labelled_tokens"]
        self.labelled += record["labelled_tokens"]
        self.steps += 1

    def flush(self, record: dict[str, Any], flops_per_token: float, peak: float | None, world: int) -> dict:
        """The metrics line for ``record`` (the window's last step); starts a new window."""
        elapsed = time.perf_counter() - self.start
        tokens_per_s = self.positions / elapsed
        line = {**record, "step_loss": record["loss"], "loss": self.loss_sum / max(self.labelled, 1),
                "log_interval_steps": self.steps, "tokens_per_s": tokens_per_s,
                "tokens_per_s_per_device": tokens_per_s / world,
                # Model FLOPs (6N + attention per token, `models.flops`): recompute's extra forward not counted.
                "model_tflops_per_device": flops_per_token * tokens_per_s / world / 1e12, **memory_stats()}
        if peak:
            line["mfu"] = flops_per_token * tokens_per_s / (peak * world)
        self.__init__()
        return line


def log_line(record: dict[str, Any], train_steps: int) -> str:
    """One human-readable line for a training metrics record."""
    steps = record.get("log_interval_steps", 1)  # the loss is the mean over the steps since the last line
    window = f"mean of {steps} steps" if steps > 1 else "1 step"
    parts = [f"step {record['step']}/{train_steps}", f"loss {record['loss']:.4f} ({window})", f"lr {record['lr']:.3e}"]
    if record.get("grad_norm") is not None:
        parts.append(f"grad_norm {record['grad_norm']:.3f}")
    parts.append(f"{record['tokens_per_s']:,.0f} tokens/s")
    if "model_tflops_per_device" in record:
        parts.append(f"{record['tokens_per_s_per_device']:,.0f} tokens/s/device, "
                     f"{record['model_tflops_per_device']:.3g} TFLOP/s/device")
    if "mfu" in record:
        parts.append(f"MFU {100 * record['mfu']:.1f}%")
    parts += [f"{record['step_time_s']:.2f} s/step", f"padding {100 * record['padding_fraction']:.1f}%"]
    return " | ".join(parts)


def _default_single_process_env() -> None:
    """A plain ``python -m megacompress.train`` is a world of one: DeepSpeed still needs a
    process group (else it tries MPI discovery), so give it a local one."""
    if "WORLD_SIZE" in os.environ or "SLURM_NTASKS" in os.environ:
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


def _read_pointer(load_dir: Path, name: str) -> str:
    tag = read_latest(load_dir, name=name, how_to_resume="set --set checkpoint.load_tag={tag}")
    if tag is None:
        raise TrainConfigError(f"checkpoint.load_dir {load_dir} has no {name!r} file; set checkpoint.load_tag")
    return tag


def _barrier_all() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _write_exit_status(run_dir: Path, reason: str, step: int, checkpoint: str | None, sig) -> None:
    """``RUN_DIR/exit_status.json``: why the run ended (launchers read it to decide on requeueing)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    status = {"reason": reason, "step": step, "checkpoint": checkpoint,
              "signal": sig.name if sig is not None else None, "time": time.time()}
    write_text_atomic(run_dir / "exit_status.json", json.dumps(status, indent=2))
