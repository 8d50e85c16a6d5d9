"""What does strop's training path cost over a bare TRL script doing the same work?

For each trainer kind, the same data, model, LoRA, batch size, steps and max length, two ways:

  strop: `training.jobs.train_candidate` through a SQLite store: start the job, claim the examples, build the
         dataset, train with the kind's module, save, register the candidate, finish the job;
  bare:  a plain script: load the model, build a `datasets.Dataset` of the same rows in memory, the same TRL
         trainer with the same config, train, save the adapter.

Kinds: sft (SFTTrainer), dpo (DPOTrainer), pg (strop: a GRPOTrainer subclass on stored advantages; bare: the
shortest GRPOTrainer subclass that trains on stored rows, since TRL has no stock trainer for them), grpo (strop:
GRPOTrainer with strop rollouts from the best-of-N loop, every group written to the store; bare: GRPOTrainer with
TRL's own generation and the same verifier reward). Targets: strop/bare <= 1.15 per kind, and for grpo the share
of the trainer's time spent writing rollouts to the store <= 5% (the job's `store_write_share`).

Filling the store is collection, not training, so it is done before the clock starts. Each round runs both
paths, alternating which goes first; the headline ratio is the median of the per-round ratios (the machine is
shared: both sides of a round see the same load). `--warmup` rounds run first and are not counted (first-use
costs: lazy imports inside TRL/transformers, allocator warm-up).

    .venv/bin/python bench/training.py --model tiny --kinds sft,dpo,pg,grpo --repeats 7 --out /tmp/bench/training.json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Run as `python bench/training.py`, this folder comes first on sys.path, where a module named like a package
# (the vLLM bench was once bench/vllm.py, now vllm_engine.py) would shadow it when TRL probes: drop the folder.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from strop.agents.models import resolve_model  # noqa: E402
from strop.memory import Store  # noqa: E402
from strop.memory.records import (  # noqa: E402
    AdvantagePayload,
    EpisodeRecord,
    ExampleKind,
    ExampleRecord,
    ModelStatus,
    ModelVersionRecord,
    RunRecord,
)
from strop.sandbox.tasks import ArithmeticTaskSet, Split  # noqa: E402

KINDS = ("sft", "dpo", "pg", "grpo")
LORA = {"r": 8, "alpha": 16, "dropout": 0.05}
TASKS = ArithmeticTaskSet()


def settings_for(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    """The kind's settings, shared by both paths (the bare scripts read the same values)."""
    common = {"batch_size": args.batch_size, "lora": LORA, "logging_steps": 10, "seed": 0}
    if kind == "sft":
        return {**common, "epochs": 1, "learning_rate": 2e-4, "max_length": args.max_length}
    if kind == "dpo":
        return {**common, "epochs": 1, "learning_rate": 5e-5, "max_length": args.max_length}
    if kind == "pg":
        return {**common, "epochs": 1, "learning_rate": 1e-4}
    g = args.num_generations
    return {
        **common,
        "num_generations": g,
        "grad_accum": args.grpo_grad_accum,
        "max_steps": args.grpo_steps,
        "max_completion_length": args.max_completion_length,
        "learning_rate": 1e-4,
        "logging_steps": 1,
    }


# ------------------------------------------------------------------------------------------------------- data


def _messages(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


def _wrong(task: Any) -> str:
    steps = "\n".join(f"Step {i}: {s}" for i, s in enumerate(task.reference_steps, 1))
    return f"{steps[: steps.rfind('=')]}= {int(task.answer) + 1}\n#### {int(task.answer) + 1}"


def rows_for(kind: str, n: int, model_path: Path) -> list[dict[str, Any]]:
    """`n` payloads of the kind, in the format the kind stores (and TRL reads)."""
    tasks = TASKS.tasks(Split.TRAIN, n)
    if kind == "sft":
        return [
            {
                "prompt": _messages(t.prompt),
                "completion": [{"role": "assistant", "content": t.reference_solution}],
            }
            for t in tasks
        ]
    if kind == "dpo":
        return [
            {
                "prompt": _messages(t.prompt),
                "chosen": [{"role": "assistant", "content": t.reference_solution}],
                "rejected": [{"role": "assistant", "content": _wrong(t)}],
            }
            for t in tasks
        ]
    # pg: the action's exact tokens and the log-probs the parent gives them (one batched forward pass).
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_path))
    model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch.float32).eval()
    rows = []
    for i, t in enumerate(tasks):
        prompt = list(tok.apply_chat_template(_messages(t.prompt), add_generation_prompt=True)["input_ids"])
        answer = t.reference_solution if i % 2 == 0 else _wrong(t)
        completion = tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        with torch.no_grad():
            logits = model(torch.tensor([prompt + completion])).logits[0, len(prompt) - 1 : -1].float()
        logprobs = torch.log_softmax(logits, -1).gather(1, torch.tensor(completion)[:, None])[:, 0].tolist()
        rows.append(
            {
                "prompt_ids": prompt,
                "completion_ids": completion,
                "logprobs": logprobs,
                "advantage": 1.0 if i % 2 == 0 else -1.0,
            }
        )
    return rows


def fill_store(store: Store, kind: str, rows: list[dict[str, Any]]) -> None:
    """One episode per row, each with one example, as a collecting loop would leave them."""
    run = store.create_run(RunRecord(loop="bench"))
    ex_kind = {"sft": ExampleKind.SFT, "dpo": ExampleKind.PAIR, "pg": ExampleKind.ADVANTAGE}[kind]
    episodes = []
    for i, row in enumerate(rows):
        example = (
            AdvantagePayload(**row).example() if kind == "pg" else ExampleRecord(kind=ex_kind, payload=row)
        )
        episodes.append(
            EpisodeRecord(run_id=run.id, task_id=f"bench-{i}", loop="bench", reward=1.0, examples=[example])
        )
    assert store.write_episodes(episodes) == len(rows)


# ------------------------------------------------------------------------------------------------ strop path


def strop_run(
    kind: str,
    args: argparse.Namespace,
    model_path: Path,
    rows: list[dict[str, Any]],
    work: Path,
    grpo_tasks: list[Any],
) -> dict[str, Any]:
    from strop.training.jobs import train_candidate

    store = Store(f"sqlite:///{work / 'strop.db'}")
    try:
        parent = store.register_model(
            ModelVersionRecord(name="base", lineage="base", path=str(model_path), status=ModelStatus.BASE)
        )
        context = None
        if kind == "grpo":
            from strop.agents.loops.registry import get_loop
            from strop.agents.runner import Runner

            spec = get_loop("best_of_n")
            context = {
                "loop": spec,
                "loop_config": spec.parse_config({"seed": 0}),
                "task_set": TASKS,
                "tasks": grpo_tasks,
                "run_id": "bench-grpo",
                "runner": Runner(store, progress=False),
            }
        else:
            fill_store(store, kind, rows)
        start, cpu = time.perf_counter(), time.process_time()
        res = train_candidate(
            store,
            parent,
            kind=kind,
            settings=settings_for(kind, args),
            output_dir=work / "out",
            context=context,
        )
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        metrics = store.get_job(res.job.id).metrics
        out: dict[str, Any] = {
            "seconds": seconds,
            "cpu_seconds": cpu,
            "train_seconds": res.seconds,
            "steps": metrics["steps"],
            "loss": res.train_loss,
        }
        if kind == "grpo":
            lengths = [
                len(s.token_ids or [])
                for ep in store.list_episodes("bench-grpo")
                for s in ep.steps
                if s.metadata.get("in_group")
            ]
            out.update(
                {
                    k: metrics[k]
                    for k in (
                        "store_write_seconds",
                        "store_write_share",
                        "rollout_seconds",
                        "trainer_seconds",
                        "seconds_per_step",
                        "episodes_written",
                        "sample_accuracy",
                    )
                },
                mean_completion_tokens=statistics.mean(lengths) if lengths else 0.0,
            )
        return out
    finally:
        store.close()


# ------------------------------------------------------------------------------------------------- bare path


def _bare_common(args: argparse.Namespace, model_path: Path) -> tuple[Any, Any, Any]:
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch.float32)
    lora = LoraConfig(
        r=LORA["r"],
        lora_alpha=LORA["alpha"],
        lora_dropout=LORA["dropout"],
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )
    return tok, model, lora


def _cpu_args(s: dict[str, Any], out: Path) -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    return {
        "output_dir": str(out / "trainer"),
        "per_device_train_batch_size": s["batch_size"],
        "learning_rate": s["learning_rate"],
        "seed": 0,
        "bf16": cuda and torch.cuda.is_bf16_supported(),
        "use_cpu": not cuda,
        "report_to": "none",
        "logging_steps": s["logging_steps"],
        "save_strategy": "no",
        "dataloader_pin_memory": cuda,
        "disable_tqdm": True,
    }


def _bare_offline(
    kind: str, args: argparse.Namespace, model_path: Path, rows: list[dict[str, Any]], out: Path
) -> Any:
    """What a user's own TRL script does for an off-line kind: config, trainer on an in-memory dataset, train, save."""
    import trl
    from datasets import Dataset

    config_cls, trainer_cls = {
        "sft": (trl.SFTConfig, trl.SFTTrainer),
        "dpo": (trl.DPOConfig, trl.DPOTrainer),
    }[kind]
    s = settings_for(kind, args)
    tok, model, lora = _bare_common(args, model_path)
    config = config_cls(
        **_cpu_args(s, out),
        num_train_epochs=s["epochs"],
        max_length=s["max_length"],
        activation_checkpointing=False,
    )
    trainer = trainer_cls(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=tok,
        peft_config=lora,
    )
    result = trainer.train()
    trainer.model.save_pretrained(str(out))
    return result


def bare_sft(args: argparse.Namespace, model_path: Path, rows: list[dict[str, Any]], out: Path) -> Any:
    return _bare_offline("sft", args, model_path, rows, out)


def bare_dpo(args: argparse.Namespace, model_path: Path, rows: list[dict[str, Any]], out: Path) -> Any:
    return _bare_offline("dpo", args, model_path, rows, out)


def _bare_pg_class() -> type:
    """The shortest GRPOTrainer subclass that trains on stored rows: the batch is the rows, padded."""
    import torch
    from trl import GRPOTrainer
    from trl.trainer.utils import pad

    class StoredRows(GRPOTrainer):
        def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
            dev, pad_id = self.accelerator.device, self.processing_class.pad_token_id
            p = [torch.tensor(x["prompt_ids"]) for x in inputs]
            c = [torch.tensor(x["completion_ids"]) for x in inputs]
            mask = pad([torch.ones_like(t) for t in c], padding_value=0, padding_side="right").to(dev)
            logps = pad(
                [torch.tensor(x["logprobs"]) for x in inputs], padding_value=0.0, padding_side="right"
            )
            return {
                "prompt_ids": pad(p, padding_value=pad_id, padding_side="left").to(dev),
                "prompt_mask": pad([torch.ones_like(t) for t in p], padding_value=0, padding_side="left").to(
                    dev
                ),
                "completion_ids": pad(c, padding_value=pad_id, padding_side="right").to(dev),
                "completion_mask": mask,
                "num_items_in_batch": mask.sum(),
                "advantages": torch.tensor([x["advantage"] for x in inputs], device=dev),
                "old_per_token_logps": logps.to(dev),
            }

    return StoredRows


def bare_pg(args: argparse.Namespace, model_path: Path, rows: list[dict[str, Any]], out: Path) -> Any:
    from datasets import Dataset
    from trl import GRPOConfig

    s = settings_for("pg", args)
    tok, model, lora = _bare_common(args, model_path)
    # GRPOConfig insists on groups of >= 2; stored rows are single actions: validate with 2, then train with 1.
    config = GRPOConfig(
        **_cpu_args(s, out),
        num_train_epochs=s["epochs"],
        num_generations=2,
        beta=0.0,
        loss_type="dapo",
        epsilon=0.2,
        optim="adamw_torch",
        lr_scheduler_type="constant",
        gradient_checkpointing=False,
        disable_dropout=True,
    )
    trainer = _bare_pg_class()(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=tok,
        peft_config=lora,
        reward_funcs=lambda **_: [],
    )
    trainer.num_generations = 1  # TRL's sampler then takes each row once per epoch
    result = trainer.train()
    trainer.model.save_pretrained(str(out))
    return result


def bare_grpo(args: argparse.Namespace, model_path: Path, tasks: list[Any], out: Path) -> tuple[Any, Any]:
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from strop.critics.verifier import VerifierCritic
    from strop.training.grpo_rewards import CriticReward

    s = settings_for("grpo", args)
    tok, model, lora = _bare_common(args, model_path)
    config = GRPOConfig(
        **_cpu_args(s, out),
        max_steps=s["max_steps"],
        gradient_accumulation_steps=s["grad_accum"],
        num_generations=s["num_generations"],
        max_completion_length=s["max_completion_length"],
        temperature=0.8,
        loss_type="dapo",
        beta=0.0,
        lr_scheduler_type="constant",
        gradient_checkpointing=False,
        disable_dropout=True,
    )
    reward = CriticReward(VerifierCritic(TASKS), 0, "verifier", {t.id: t for t in tasks})
    data = Dataset.from_list([{"prompt": _messages(t.prompt), "task_id": t.id} for t in tasks])
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[reward],
        args=config,
        train_dataset=data,
        processing_class=tok,
        peft_config=lora,
    )
    result = trainer.train()
    trainer.model.save_pretrained(str(out))
    return result, trainer


def bare_run(
    kind: str,
    args: argparse.Namespace,
    model_path: Path,
    rows: list[dict[str, Any]],
    work: Path,
    grpo_tasks: list[Any],
) -> dict[str, Any]:
    out = work / "bare"
    start, cpu = time.perf_counter(), time.process_time()
    if kind == "grpo":
        result, trainer = bare_grpo(args, model_path, grpo_tasks, out)
    else:
        result = {"sft": bare_sft, "dpo": bare_dpo, "pg": bare_pg}[kind](args, model_path, rows, out)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    res: dict[str, Any] = {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "steps": int(result.global_step),
        "loss": float(result.training_loss),
    }
    if kind == "grpo":
        lengths = [
            h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h
        ]
        res["mean_completion_tokens"] = statistics.mean(lengths) if lengths else 0.0
    return res


# ----------------------------------------------------------------------------------------------------- driver


@contextlib.contextmanager
def timed_generation(into: list[float]) -> Any:
    """Time TRL's `GRPOTrainer._generate` (strop: the rollout_func, store write included; bare: TRL's own
    transformers generation and decoding): the rest of a GRPO step is the same code on both sides."""
    from trl import GRPOTrainer

    original = GRPOTrainer._generate

    def wrapper(self: Any, prompts: list[Any]) -> Any:
        start = time.perf_counter()
        try:
            return original(self, prompts)
        finally:
            into.append(time.perf_counter() - start)

    GRPOTrainer._generate = wrapper  # type: ignore[method-assign]
    try:
        yield into
    finally:
        GRPOTrainer._generate = original  # type: ignore[method-assign]


def bench_kind(kind: str, args: argparse.Namespace, model_path: Path) -> dict[str, Any]:
    rows = rows_for(kind, args.examples, model_path) if kind != "grpo" else []
    grpo_tasks = TASKS.tasks(Split.TRAIN, args.grpo_tasks) if kind == "grpo" else []
    paths: dict[str, Callable[[Path], dict[str, Any]]] = {
        "strop": lambda w: strop_run(kind, args, model_path, rows, w, grpo_tasks),
        "bare": lambda w: bare_run(kind, args, model_path, rows, w, grpo_tasks),
    }
    runs: dict[str, list[dict[str, Any]]] = {"strop": [], "bare": []}
    warm: dict[str, list[float]] = {"strop": [], "bare": []}
    for r in range(args.warmup + args.repeats):
        order = ("strop", "bare") if r % 2 == 0 else ("bare", "strop")
        for name in order:
            work = Path(tempfile.mkdtemp(prefix=f"bench-train-{kind}-{name}-"))
            try:
                gen: list[float] = []
                with (
                    contextlib.redirect_stdout(io.StringIO()),
                    (  # the Trainer prints its log dicts
                        timed_generation(gen) if kind == "grpo" else contextlib.nullcontext()
                    ),
                ):
                    got = paths[name](work)
                if gen:
                    got["generate_seconds"] = sum(gen)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            if r >= args.warmup:
                runs[name].append(got)
            else:
                warm[name].append(got["seconds"])
            tag = "warm-up" if r < args.warmup else f"round {r - args.warmup + 1}"
            print(f"  {kind} {tag} {name}: {got['seconds']:.2f} s ({got['steps']} steps)", flush=True)
    strop_s = [x["seconds"] for x in runs["strop"]]
    bare_s = [x["seconds"] for x in runs["bare"]]
    ratios = [a / b for a, b in zip(strop_s, bare_s, strict=True)]
    cpu_ratios = [
        a["cpu_seconds"] / b["cpu_seconds"] for a, b in zip(runs["strop"], runs["bare"], strict=True)
    ]
    out: dict[str, Any] = {
        "strop_seconds": strop_s,
        "bare_seconds": bare_s,
        "ratios": ratios,
        "ratio": statistics.median(ratios),
        "strop_median": statistics.median(strop_s),
        "bare_median": statistics.median(bare_s),
        # CPU seconds of the process (all threads): less sensitive to other jobs on the shared cores.
        "cpu_ratios": cpu_ratios,
        "cpu_ratio": statistics.median(cpu_ratios),
        # Inside the strop figure: the kind's own module (load, train, save); the rest is the job's bookkeeping.
        "strop_train_median": statistics.median(x["train_seconds"] for x in runs["strop"]),
        "strop_job_overhead_median": statistics.median(
            x["seconds"] - x["train_seconds"] for x in runs["strop"]
        ),
        "steps": {"strop": runs["strop"][0]["steps"], "bare": runs["bare"][0]["steps"]},
        "settings": settings_for(kind, args),
        "warmup_seconds": warm,
    }
    if kind == "grpo":
        for key in (
            "store_write_share",
            "store_write_seconds",
            "rollout_seconds",
            "trainer_seconds",
            "seconds_per_step",
            "mean_completion_tokens",
            "sample_accuracy",
        ):
            out[key] = statistics.median(x[key] for x in runs["strop"])
        out["bare_mean_completion_tokens"] = statistics.median(
            x["mean_completion_tokens"] for x in runs["bare"]
        )
        out["strop_generate_seconds"] = statistics.median(x["generate_seconds"] for x in runs["strop"])
        out["bare_generate_seconds"] = statistics.median(x["generate_seconds"] for x in runs["bare"])
        out["store_write_per_step"] = out["store_write_seconds"] / args.grpo_steps
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", help="tiny, smollm2-135m or a model folder")
    ap.add_argument("--kinds", default=",".join(KINDS), help="comma-separated: sft,dpo,pg,grpo")
    ap.add_argument("--repeats", type=int, default=3, help="counted rounds (each runs both paths)")
    ap.add_argument("--warmup", type=int, default=1, help="uncounted rounds first")
    ap.add_argument("--examples", type=int, default=64, help="stored examples for sft/dpo/pg")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=128, help="sft/dpo max tokens")
    ap.add_argument("--grpo-steps", type=int, default=8, help="GRPO optimizer steps")
    ap.add_argument("--grpo-tasks", type=int, default=32, help="GRPO prompts (tasks)")
    ap.add_argument("--grpo-grad-accum", type=int, default=2)
    ap.add_argument("--num-generations", type=int, default=4)
    ap.add_argument("--max-completion-length", type=int, default=32)
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args()

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message="You are using 'rollout_func'", category=UserWarning)
    import datasets
    import torch
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if bad := [k for k in kinds if k not in KINDS]:
        ap.error(f"unknown kinds {bad}; known: {', '.join(KINDS)}")
    model_path = resolve_model(args.model)
    results: dict[str, Any] = {
        "model": args.model,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": {
            "cpus": os.cpu_count(),
            "cuda": torch.cuda.is_available(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "kinds": {},
    }
    for kind in kinds:
        print(f"{kind}:", flush=True)
        results["kinds"][kind] = bench_kind(kind, args, model_path)

    print(f"\nmodel {args.model}, {args.repeats} rounds (+{args.warmup} warm-up), median of per-round ratios")
    print(
        f"{'kind':<6}{'steps':>6}{'strop s':>10}{'(train)':>10}{'bare s':>10}{'strop/bare':>12}{'cpu s/b':>9}"
        "  rounds"
    )
    for kind, r in results["kinds"].items():
        rounds = ", ".join(f"{x:.2f}" for x in r["ratios"])
        print(
            f"{kind:<6}{r['steps']['strop']:>6}{r['strop_median']:>10.2f}{r['strop_train_median']:>10.2f}"
            f"{r['bare_median']:>10.2f}{r['ratio']:>12.2f}{r['cpu_ratio']:>9.2f}  {rounds}"
        )
    if "grpo" in results["kinds"]:
        g = results["kinds"]["grpo"]
        print(
            f"grpo: store writes {100 * g['store_write_share']:.2f}% of the trainer's time "
            f"({g['store_write_per_step'] * 1000:.1f} ms per step of {g['seconds_per_step']:.2f} s); rollouts "
            f"{g['rollout_seconds']:.2f} s; in GRPOTrainer._generate: strop {g['strop_generate_seconds']:.2f} s, "
            f"bare {g['bare_generate_seconds']:.2f} s; mean completion tokens strop "
            f"{g['mean_completion_tokens']:.1f}, bare {g['bare_mean_completion_tokens']:.1f}"
        )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
