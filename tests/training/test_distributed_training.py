"""Training on two processes (gloo on the CPU, :func:`tests.distributed.run_workers`): data parallel
and FSDP train as one process does, distributed checkpoints resume bit-exactly on two processes and
load onto one, a one-process checkpoint resumes on two, and a batch the processes cannot split is
refused in one line.

The two-process runs happen once, in one set of worker processes (:func:`two_process_runs`), and
the tests read what they wrote.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import yaml

from kinema.checkpoints.io import load_safetensors
from kinema.errors import KinemaError
from kinema.training import train
from kinema.training.loop import METRICS_FILE
from tests.distributed import run_workers

REPO = Path(__file__).resolve().parents[2]
STEPS = 10
TOLERANCE = 1e-5  # N processes sum the same items' gradients in another order than one process


def transformer_config(out_dir: Path, vae: Path, **over) -> dict:
    """The tiny Wan transformer on synthetic clips: 4 items a step (2 micro-batches of 2), caption
    dropout so that the items' generators matter, one thread (as each worker process has)."""
    base = yaml.safe_load((REPO / "configs" / "tiny-transformer.yaml").read_text())
    return {**base, "out_dir": str(out_dir), "vae": str(vae), "steps": STEPS, "checkpoint_every": 5, "batch_size": 2, "grad_accum": 2,
            "caption_dropout": 0.3, "threads": 1, **over}  # fmt: skip


def _train_each(rank: int, n: int, plan: list) -> dict:
    """Worker: run each (name, config, train keyword arguments) of ``plan`` in turn; a refusal's
    message is the result, else None."""
    results = {}
    for name, config, kwargs in plan:
        try:
            train(config, progress=False, **kwargs)
            results[name] = None
        except KinemaError as e:
            results[name] = str(e)
    return results


def _until_step(src: Path, dst: Path, step: int) -> Path:
    """A copy of run ``src`` as it stood after checkpoint ``step`` (later checkpoints, the export
    and later metrics gone), to resume elsewhere."""
    shutil.copytree(src, dst)
    for ckpt in (dst / "checkpoints").glob("step-*"):
        if int(ckpt.name.split("-")[1]) > step:
            shutil.rmtree(ckpt)
    (dst / "checkpoints/latest").write_text(f"step-{step:07d}")
    shutil.rmtree(dst / "model")
    return dst


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """A one-process reference run, then on two processes: a refused batch, FSDP and data-parallel
    runs of 10 steps, an FSDP run of 5 steps resumed to 10, the reference's step-5 checkpoint
    resumed to 10 with FSDP and with data parallel, and a data-parallel run of 5 steps resumed to 10
    with FSDP; also a run whose VAE is missing. Returns the run directories' root, a config maker and
    each rank's results (None, or the message of a refusal)."""
    root = tmp_path_factory.mktemp("dist")
    vae = train({**yaml.safe_load((REPO / "configs/tiny-vae.yaml").read_text()), "out_dir": str(root / "vae"), "steps": 0}, progress=False)
    cfg = lambda name, **over: transformer_config(root / name, vae, **over)  # noqa: E731
    train(cfg("one"), progress=False)
    for name in ("from_one-fsdp", "from_one-dp"):
        _until_step(root / "one", root / name, 5)
    fsdp = {"parallel": {"fsdp": True}}
    plan = [
        ("refused", cfg("refused", batch_size=3), {}),
        ("no_vae", cfg("no_vae") | {"vae": str(root / "gone")}, {}),
        ("fsdp", cfg("fsdp", **fsdp), {}),
        ("dp", cfg("dp"), {}),
        ("split-a", cfg("split", **fsdp), {"steps": 5}),
        ("split-b", cfg("split", **fsdp), {"resume": True}),
        ("from_one-fsdp", cfg("from_one-fsdp", **fsdp), {"resume": True}),
        ("from_one-dp", cfg("from_one-dp"), {"resume": True}),
        ("dp_then_fsdp-a", cfg("dp_then_fsdp"), {"steps": 5}),
        ("dp_then_fsdp-b", cfg("dp_then_fsdp", **fsdp), {"resume": True}),
    ]
    results = run_workers(_train_each, 2, plan)
    return {"root": root, "vae": vae, "cfg": cfg, "results": results}


def _dcp_state(path: Path) -> dict:
    """A distributed checkpoint's whole tensors, read with no process group (DCP's own converter)."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with tempfile.TemporaryDirectory() as tmp:
        dcp_to_torch_save(path, Path(tmp) / "state.pt")
        return torch.load(Path(tmp) / "state.pt", weights_only=False)


def _weights(run: Path, step: int, what: str = "model") -> dict[str, torch.Tensor]:
    """A checkpoint's model (or EMA) weights, whichever format it has."""
    ckpt = run / f"checkpoints/step-{step:07d}"
    if (ckpt / ".metadata").is_file():
        return _dcp_state(ckpt)[what]
    return load_safetensors(ckpt / f"{what}.safetensors")


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def _leaves(tree, prefix=""):
    """(name, value) of every leaf of a nested dict / list."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _leaves(v, f"{prefix}{k}.")
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            yield from _leaves(v, f"{prefix}{i}.")
    else:
        yield prefix[:-1], tree


def _loss(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / METRICS_FILE).read_text().splitlines()]


# ------------------------------------------------------------------------------------------------
# N processes train as one
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["fsdp", "dp"])
def test_two_processes_train_as_one(runs, mode):
    root = runs["root"]
    one, run = root / "one", root / mode
    diff = _max_diff(_weights(run, STEPS), _weights(one, STEPS))
    ema = _max_diff(load_safetensors(run / "model/diffusion_pytorch_model.safetensors"), load_safetensors(one / "model/diffusion_pytorch_model.safetensors"))
    print(f"{mode}: max |2 processes - 1 process| after {STEPS} steps: parameters {diff:.3g}, exported EMA {ema:.3g}")
    assert diff <= TOLERANCE and ema <= TOLERANCE
    # Rank 0 alone logs, the mean loss of all the step's items; one checkpoint file per process.
    assert _loss(run) == pytest.approx(_loss(one), abs=1e-5) and len(_loss(run)) == STEPS
    ckpt = run / f"checkpoints/step-{STEPS:07d}"
    assert sorted(p.name for p in ckpt.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp", "trainer.json"]
    assert json.loads((ckpt / "trainer.json").read_text())["processes"] == 2
    assert not list((run / "checkpoints").glob(".tmp-*"))


def test_fsdp_shards_what_data_parallel_replicates(runs):
    """In the checkpoints' metadata: with FSDP each process wrote its half of every parameter's
    weights and Adam moments (two chunks each), with data parallel one process wrote them whole;
    both hold every parameter's moments, and the config hash is the one-process run's."""
    import torch.distributed.checkpoint as dcp

    def chunks(run: str) -> dict[str, int]:
        meta = dcp.FileSystemReader(runs["root"] / run / f"checkpoints/step-{STEPS:07d}").read_metadata().state_dict_metadata
        return {k: len(v.chunks) for k, v in meta.items() if hasattr(v, "chunks")}

    params = list(_weights(runs["root"] / "one", STEPS))
    for run, n in (("fsdp", 2), ("dp", 1)):
        got = chunks(run)
        for name in params:
            for key in (f"model.{name}", f"ema.{name}", f"optim.state.{name}.exp_avg", f"optim.state.{name}.exp_avg_sq"):
                assert got[key] == n, (run, key, got[key])
    info = lambda run: json.loads((runs["root"] / run / f"checkpoints/step-{STEPS:07d}/trainer.json").read_text())  # noqa: E731
    assert info("fsdp")["config_hash"] == info("one")["config_hash"] == info("dp")["config_hash"]


# ------------------------------------------------------------------------------------------------
# Distributed checkpoints
# ------------------------------------------------------------------------------------------------
def test_distributed_checkpoint_resumes_bit_exact_on_two_processes(runs):
    root = runs["root"]
    straight, split = _dcp_state(root / f"fsdp/checkpoints/step-{STEPS:07d}"), _dcp_state(root / f"split/checkpoints/step-{STEPS:07d}")
    a, b = dict(_leaves(straight)), dict(_leaves(split))
    assert a.keys() == b.keys()
    for k in a:  # model, EMA and optimiser state (moments, step counts, hyper-parameters)
        assert torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k], k
    assert _loss(root / "split") == _loss(root / "fsdp")
    exported = [load_safetensors(root / run / "model/diffusion_pytorch_model.safetensors") for run in ("fsdp", "split")]
    assert all(torch.equal(exported[0][k], exported[1][k]) for k in exported[0])


def test_distributed_checkpoint_loads_onto_one_process(runs, tmp_path):
    """A checkpoint two processes wrote loads whole into one process (no process group): model, EMA
    and optimiser equal what was saved, and the run continues as the one-process run does."""
    from kinema.training.checkpointing import load_checkpoint
    from kinema.training.ema import EMA
    from kinema.training.loop import build_model
    from kinema.training.config import load_config

    root = runs["root"]
    ckpt = root / "fsdp/checkpoints/step-0000005"
    saved = _dcp_state(ckpt)
    config = load_config(runs["cfg"]("unused"))
    model = build_model(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1.0)
    ema = EMA(model, config.ema_decay)
    assert load_checkpoint(ckpt, model, ema, optimizer) == 5
    assert all(torch.equal(v, saved["model"][k]) for k, v in model.state_dict().items())
    assert all(torch.equal(v, saved["ema"][k]) for k, v in ema.state_dict().items())
    names = [n for n, _ in model.named_parameters()]
    for i, moments in optimizer.state_dict()["state"].items():
        assert all(torch.equal(moments[m], saved["optim"]["state"][names[i]][m]) for m in ("exp_avg", "exp_avg_sq", "step"))
    assert optimizer.param_groups[0]["lr"] == saved["optim"]["param_groups"][0]["lr"]

    run = _until_step(root / "fsdp", tmp_path / "onto_one", 5)
    train(runs["cfg"]("onto_one") | {"out_dir": str(run)}, resume=True, progress=False)  # one process
    diff = _max_diff(_weights(run, STEPS), _weights(root / "one", STEPS))
    print(f"2 processes (5 steps) then 1 process (5 steps) vs 1 process (10 steps): max |diff| {diff:.3g}")
    assert diff <= TOLERANCE
    assert (run / f"checkpoints/step-{STEPS:07d}/model.safetensors").is_file()  # one process writes its own format


@pytest.mark.parametrize("mode", ["fsdp", "dp"])
def test_one_process_checkpoint_resumes_on_two_processes(runs, mode):
    root = runs["root"]
    diff = _max_diff(_weights(root / f"from_one-{mode}", STEPS), _weights(root / "one", STEPS))
    print(f"1 process (5 steps) then 2 processes {mode} (5 steps) vs 1 process (10 steps): max |diff| {diff:.3g}")
    assert diff <= TOLERANCE and len(_loss(root / f"from_one-{mode}")) == STEPS


def test_a_data_parallel_checkpoint_resumes_sharded(runs):
    """``parallel`` may change on resume: a data-parallel checkpoint (whole tensors, written once)
    loads into FSDP's shards."""
    root = runs["root"]
    diff = _max_diff(_weights(root / "dp_then_fsdp", STEPS), _weights(root / "one", STEPS))
    print(f"2 processes dp (5 steps) then fsdp (5 steps) vs 1 process (10 steps): max |diff| {diff:.3g}")
    assert diff <= TOLERANCE


# ------------------------------------------------------------------------------------------------
# Refusals and the command line
# ------------------------------------------------------------------------------------------------
def test_a_batch_the_processes_cannot_split_is_refused(runs):
    said = "batch_size 3 does not split over 2 processes: use a batch_size that is a multiple of 2 (2, 4, 6, ...), or start 1 or 3 processes"
    assert [r["refused"] for r in runs["results"]] == [said, said]
    assert not (runs["root"] / "refused").exists()
    # Every other run of the plan went through on both processes.
    assert all(r[name] is None for r in runs["results"] for name in r if name not in ("refused", "no_vae"))


def test_an_error_on_rank_0_while_preparing_stops_the_others(runs):
    """Rank 0 prepares first (caches, a tokenizer); when it fails, the others stop at once with a
    line pointing at its error, instead of waiting in a collective until the timeout."""
    rank0, rank1 = (r["no_vae"] for r in runs["results"])
    assert rank0.startswith("vae not found: ") and rank1 == "rank 0 stopped before training began (its error says why)"


def test_torchrun_runs_python_m_kinema_train(runs, tmp_path):
    """``torchrun --nproc-per-node 2 -m kinema train`` end to end: the ranks join through torchrun's
    variables, rank 0 alone prints, and the run equals the workers' data-parallel one."""
    cfg = runs["cfg"]("cli") | {"out_dir": str(tmp_path / "cli"), "steps": 2}
    path = tmp_path / "cli.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "kinema", "train", str(path), "--no-progress"]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("model written to") == 1
    assert _loss(tmp_path / "cli") == pytest.approx(_loss(runs["root"] / "dp")[:2], abs=1e-5)
