"""The ``kinema`` command line: ``generate``, ``extend``, ``train``, ``package``, ``eval``, ``info``, ``replay`` and ``serve``.

A thin front end: ``generate`` turns its flags into a :class:`~kinema.request.GenerationRequest`
and runs it (:func:`kinema.generation.generate`), which checks everything before loading weights;
the other commands call their module's one function. Bad input (arguments, paths, checkpoints)
prints one line, ``error: ...``, on stderr and exits with status 2; Ctrl-C prints ``interrupted``
and exits with 130; neither shows a traceback nor leaves a partial file.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from .errors import Cancelled, KinemaError, RequestError

EVAL_STEPS = 20  # `kinema eval --model`: sampling steps of a diffusion model unless --steps says otherwise
SAMPLER_NAMES = ("unipc", "euler", "ddim", "ddpm")  # kinema.sampling.SAMPLERS and DISCRETE_SAMPLERS (not imported here: the command line starts fast)
# A request's fields as `generate` calls them (a RequestError names fields; the command line says flags).
FLAGS = {
    "prompt": "prompt", "negative_prompt": "--negative-prompt", "num_frames": "--frames",
    "num_inference_steps": "--steps", "guidance_scale": "--guidance", "shift": "--shift", "sampler": "--sampler", "cache_threshold": "--cache",
    "seed": "--seed", "temperature": "--temperature", "top_k": "--top-k", "top_p": "--top-p", "typical_p": "--typical-p",
    "image": "--image", "max_area": "--max-area", "video": "--input", "strength": "--strength", "output": "--output", "model": "--model",
    "device": "--device", "dtype": "--dtype", "quantize": "--quantize", "threads": "--threads", "max_memory": "--max-memory", "offload": "--offload", "prompt_extend": "--prompt-extend", "extend": "INPUT", "overlap": "--overlap",
    "prompt_schedule": "the prompts (--prompt, --prompt-frames)", "window": "--window",
}  # fmt: skip


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit status 2."""

    def error(self, message: str):  # noqa: D401 - argparse API
        sys.stderr.write(f"error: {message} (see {self.prog} --help)\n")
        raise SystemExit(2)


def _size(text: str) -> tuple[int, int] | None:
    if text.strip().lower() == "auto":  # the model's own choice: its default, or from the picture (Wan's image-to-video)
        return None
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like WIDTHxHEIGHT, e.g. 832x480, or auto; got {text!r}") from None
    return w, h


def _add_token_sampling(p: argparse.ArgumentParser) -> None:
    """The token-model sampling flags (token-ar models; refused for diffusion models)."""
    p.add_argument("--temperature", type=float, default=None, help="token models: softmax temperature, 0 = greedy (default: the model's)")
    p.add_argument("--top-k", type=int, default=None, help="token models: keep the k most probable tokens, 0 = off (default: the model's)")
    p.add_argument("--top-p", type=float, default=None, help="token models: nucleus mass in (0, 1], 1 = off (default: the model's)")
    p.add_argument("--typical-p", type=float, default=None, help="token models: typical mass in (0, 1], 1 = off (default: the model's)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="kinema", description="Text (and images, and videos) to video with Wan 2.1, LTX-Video and friends.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    g = sub.add_parser("generate", help="generate a video from a prompt (and an image or a video)")
    g.add_argument("prompt_pos", nargs="?", metavar="PROMPT", help="the prompt")
    g.add_argument("--prompt", action="append", help="the prompt (instead of the positional PROMPT); given again, the next prompt as the video goes on (a prompt schedule)")
    _add_long_video(g)
    g.add_argument(
        "--model", default=None,
        help="model directory (kinema, diffusers, original Wan or original LTX-Video layout) or a shipped model's name (default: shapes, inside the package)",
    )  # fmt: skip
    g.add_argument("--negative-prompt", default=None, help="what to steer away from")
    g.add_argument(
        "--size", type=_size, default=None,
        help="WIDTHxHEIGHT, e.g. 832x480, or auto (the default): the model's size; with --image on a Wan image-to-video model, "
        "the picture's aspect ratio within the model's area, as Wan does",
    )  # fmt: skip
    g.add_argument("--frames", type=int, default=None, help="number of frames: 4k+1 for Wan, 8k+1 for LTX-Video, tk+1 for a token-ar model whose tokenizer compresses time t times, 2k for a pixel-dit model (default: the model's)")
    g.add_argument("--steps", type=int, default=None, help="diffusion models: sampling steps (default: the model's)")
    g.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (1 = off)")
    g.add_argument("--shift", type=float, default=None, help="diffusion models: flow-matching shift (default: the model's)")
    g.add_argument("--sampler", choices=SAMPLER_NAMES, default=None, help="diffusion models: solver, unipc or euler (flow matching), ddim or ddpm (pixel-dit) (default: the model's)")
    g.add_argument(
        "--cache", type=float, default=None, metavar="THRESHOLD",
        help="diffusion models: step caching, skip a step's blocks after the first when its change is below THRESHOLD (off by default)",
    )  # fmt: skip
    _add_token_sampling(g)
    g.add_argument("--image", default=None, metavar="PATH", help="image-to-video: start from this picture (PNG, JPEG ...)")
    g.add_argument(
        "--max-area", type=_size, default=None, metavar="WxH",
        help="Wan image-to-video without --size: the area the picture's aspect ratio is fitted into, e.g. 1280x720 for the 720p models (default: the model's size)",
    )  # fmt: skip
    g.add_argument("--input", default=None, metavar="PATH", help="video-to-video: transform this video as the prompt says")
    g.add_argument(
        "--strength", type=float, default=None,
        help="with --input: noise level in (0, 1] the input is taken to; 1 ignores it (default 0.8)",
    )  # fmt: skip
    g.add_argument("--seed", type=int, default=0, help="random seed, 0 to 2**64 - 1 (default 0)")
    g.add_argument("--output", "-o", default="out.mp4", help="output .mp4 path (default out.mp4)")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA if available)")
    g.add_argument("--dtype", default=None, help="float32, bfloat16 or auto (default: as stored)")
    g.add_argument(
        "--quantize", choices=("fp8",), default=None,
        help="token-ar models: store the linear layers of the token model's blocks in FP8 (e4m3, per-row scales), computing in --dtype or bfloat16 (half the memory; slower on a CPU, which converts the weights every call)",
    )  # fmt: skip
    g.add_argument(
        "--max-memory", default=None, metavar="SIZE",
        help="a memory budget on the device, e.g. 12GiB or 8GB: the planner moves weights (components in turns, blocks streamed) so the run fits, with the same frames (default: what is free, only when everything resident would not fit)",
    )  # fmt: skip
    g.add_argument(
        "--offload", choices=("auto", "none", "model", "block"), default=None,
        help="force how weights move: none (all resident), model (components in turns), block (also stream the transformer's blocks); auto (default) lets --max-memory decide",
    )  # fmt: skip
    g.add_argument(
        "--prompt-extend", default=None, metavar="MODEL_DIR",
        help="rewrite the prompt in detail first with a local instruction-tuned causal LM (e.g. a Qwen2.5 Instruct folder), as Wan's --use_prompt_extend; "
        "deterministic with --seed, and the video's metadata keeps both prompts",
    )  # fmt: skip
    g.add_argument("--threads", type=int, default=None, help="CPU threads (default: every core this process may use; the count moves the last bits of the result)")
    g.add_argument("--timings", action="store_true", help="print where the time went (load, text, denoise or tokens, decode, write)")
    g.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    _add_parallel(g)

    x = sub.add_parser("extend", help="continue a video: its frames, then new ones that follow from its end (token-ar, Wan text-to-video, LTX-Video and pixel-dit models)")
    x.add_argument("input", metavar="INPUT", help="the video to continue (.mp4, .mkv, .mov)")
    x.add_argument("prompt_pos", nargs="?", metavar="PROMPT", help="what happens next")
    x.add_argument("--prompt", action="append", help="what happens next (instead of the positional PROMPT); given again, what happens after that")
    x.add_argument("--prompt-frames", type=_frame_list, default=None, metavar="N,N,...", help="with several --prompt: the new frames of each (default: --frames shared evenly)")
    x.add_argument("--window", type=int, default=None, metavar="N", help="frames per window when the new frames do not fit in one (default: the model's clip)")
    x.add_argument("--model", default=None, help="a model directory or a shipped model's name (default: shapes)")
    x.add_argument("--negative-prompt", default=None, help="what to steer away from")
    x.add_argument("--frames", type=int, default=None, help="new frames, a multiple of the model's time stride (default: the model's clip less its first frame)")
    x.add_argument("--overlap", type=int, default=None, metavar="K", help="the input's last K frames the model sees as the past (default: as many as it can see)")
    x.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (1 = off)")
    x.add_argument("--steps", type=int, default=None, help="diffusion models: sampling steps (default: the model's)")
    x.add_argument("--shift", type=float, default=None, help="diffusion models: flow-matching shift (default: the model's)")
    x.add_argument("--sampler", choices=SAMPLER_NAMES, default=None, help="diffusion models: solver (default: the model's)")
    x.add_argument("--cache", type=float, default=None, metavar="THRESHOLD", help="diffusion models: step caching threshold (off by default)")
    _add_token_sampling(x)
    x.add_argument("--seed", type=int, default=0, help="random seed, 0 to 2**64 - 1 (default 0)")
    x.add_argument("--output", "-o", default=None, help="output path (default: INPUT's name with -extended, beside it; .mp4 unless INPUT is .mkv or .mov)")
    x.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA if available)")
    x.add_argument("--dtype", default=None, help="float32, bfloat16 or auto (default: as stored)")
    x.add_argument("--threads", type=int, default=None, help="CPU threads (default: every core this process may use)")
    x.add_argument("--quiet", "-q", action="store_true", help="no progress bar")

    t = sub.add_parser("train", help="train a Wan VAE, a Wan transformer, a VQ video tokenizer, a token model or a pixel DiT with its text encoder (wan-vae, wan-transformer, vq-tokenizer, token-ar, pixel-dit) from a YAML config")
    t.add_argument("config", help="training config (YAML), e.g. configs/tiny-vae.yaml")
    t.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    t.add_argument("--steps", type=int, default=None, help="total optimiser steps (overrides the config)")
    t.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: the config's, else CUDA if available)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")

    k = sub.add_parser("package", help="package a trained transformer (or token model) and its VAE (or VQ tokenizer) as a kinema model directory")
    k.add_argument("transformer", help="the wan-transformer, token-ar or pixel-dit run's model/ folder (written by kinema train)")
    k.add_argument("--out", required=True, help="the model directory to write (replaced if it exists)")
    k.add_argument("--vae", default=None, help="wan: the VAE's model/ folder (default: the one its training config named)")
    k.add_argument("--tokenizer", default=None, help="token-ar: the VQ tokenizer's model/ folder (default: the one its training config named)")
    k.add_argument("--sampler", choices=SAMPLER_NAMES, default=None, help="wan: default solver (default unipc); pixel-dit: ddim or ddpm (default ddim)")
    k.add_argument("--shift", type=float, default=None, help="wan: default flow-matching shift (default 1)")
    k.add_argument("--steps", type=int, default=None, help="wan and pixel-dit: default sampling steps (default 20 for wan, 50 for pixel-dit)")
    k.add_argument("--guidance", type=float, default=None, help="default guidance scale (default 5 for wan, 3 for token-ar, 7.5 for pixel-dit)")
    k.add_argument("--fps", type=float, default=None, help="frames per second of the videos it writes (default: the training data's, 16 for the shapes world)")
    k.add_argument("--temperature", type=float, default=None, help="token-ar: default temperature, 0 = greedy (default 1)")
    k.add_argument("--top-k", type=int, default=None, help="token-ar: default top-k, 0 = off (default 0)")
    k.add_argument("--top-p", type=float, default=None, help="token-ar: default nucleus mass, 1 = off (default 1)")
    k.add_argument("--typical-p", type=float, default=None, help="token-ar: default typical mass, 1 = off (default 1)")

    e = sub.add_parser("eval", help="score clips with the shapes-world judge (seen and held-out combinations)")
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--clips", help="judge the clips of this folder (video files + prompts.jsonl)")
    src.add_argument("--model", help="generate the prompt set with this model (a directory or a shipped model's name) into --out, then judge it")
    src.add_argument("--reference", action="store_true", help="render ground-truth clips into --out, then judge them")
    src.add_argument(
        "--reconstruct", metavar="MODEL",
        help="render ground-truth clips, pass them through MODEL's VAE or tokenizer (encode, decode) into --out, then "
             "judge them: how much of a real clip the codec keeps, apart from the transformer. MODEL may also be a "
             "VAE's or VQ tokenizer's own folder (a training run's model/)",
    )  # fmt: skip
    e.add_argument("--out", default="eval-clips", help="where generated or rendered clips go (default eval-clips)")
    e.add_argument("--split", choices=("all", "seen", "held_out"), default="all", help="which combinations")
    e.add_argument("--style", choices=("canonical", "reworded", "wide-words", "unseen-words"), default="canonical",
                   help="prompt wording: the template; paraphrases no training caption uses; new sentences in the wide training "
                        "vocabulary; or words no training caption uses")
    e.add_argument("--size", type=int, default=None, help="square clip side in pixels (default: the model's with --model, else 64)")
    e.add_argument("--frames", type=int, default=None, help="frames per clip (default: the model's with --model, else 33)")
    e.add_argument("--steps", type=int, default=None, help=f"diffusion models: sampling steps with --model (default {EVAL_STEPS})")
    e.add_argument("--guidance", type=float, default=None, help="guidance scale with --model (default: the model's)")
    e.add_argument("--sampler", choices=SAMPLER_NAMES, default=None, help="diffusion models: solver with --model (default: the model's)")
    _add_token_sampling(e)
    e.add_argument("--seed", type=int, default=0, help="seed of the first clip (clip i uses seed + i)")
    e.add_argument("--limit", type=int, default=None, help="only the first N prompts")
    e.add_argument("--per-prompt", type=int, default=1, help="clips per prompt, each with its own seed (default 1)")
    e.add_argument("--device", default=None, help="cpu, cuda ... with --model")
    e.add_argument("--threads", type=int, default=None, help="CPU threads (default: every core this process may use; the count moves the last bits of the result)")
    e.add_argument("--json", help="also write the report here")

    s = sub.add_parser("serve", help="serve a web page and an HTTP API (OpenAI's video API shape) over a job queue that survives crashes")
    s.add_argument("--model", action="append", default=None, metavar="MODEL",
                   help="a model to serve beside the shipped ones (a directory or a shipped model's name); repeat for several; the first is the default")  # fmt: skip
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; anything else needs --api-key)")
    s.add_argument("--port", type=int, default=7860, help="port (default 7860; 0: any free port)")
    s.add_argument("--queue", default="kinema-queue", metavar="DIR", help="the queue folder: jobs (SQLite), uploads and videos (default kinema-queue)")
    s.add_argument("--api-key", default=None, help="every request needs Authorization: Bearer KEY (default: $KINEMA_API_KEY; none on loopback)")
    s.add_argument("--device", action="append", default=None, help="run jobs on this device, one worker each; repeat for several (default: CUDA if available, else CPU)")
    s.add_argument("--cache-memory", default=None, metavar="SIZE", help="loaded models kept between jobs, e.g. 16GiB (default: half of the memory free at start)")
    s.add_argument("--max-tries", type=int, default=3, help="runs of a job interrupted by a server crash before it is failed (default 3)")
    s.add_argument("--max-upload", default="64MiB", metavar="SIZE", help="largest picture or video upload (default 64MiB)")
    s.add_argument("--max-queued", type=int, default=1000, help="jobs waiting at once before new ones are refused with 429 (default 1000)")
    s.add_argument("--prompt-extend", default=None, metavar="MODEL_DIR", help="a local instruction-tuned causal LM (e.g. Qwen2.5 Instruct) for the page's Enhance prompt button and the API's prompt_extend")
    s.add_argument("--no-ui", action="store_true", help="the HTTP API only, no web page")
    s.add_argument("--stop-after", type=float, default=None, metavar="SECONDS", help="stop by itself after this long (scripts and tests)")
    s.add_argument("--threads", type=int, default=None, help="CPU threads of each worker (default: every core)")

    i = sub.add_parser("info", help="describe a preset or a model directory as JSON, or print what a video kinema made was made from")
    i.add_argument("target", metavar="PRESET_OR_PATH", help="a preset, a shipped model's name, a model directory, or a video (.mp4, .mkv, .mov) kinema wrote")

    r = sub.add_parser("replay", help="make a video kinema wrote again from the request, model hash and input hashes in its own file")
    r.add_argument("video", metavar="VIDEO", help="a video kinema generate wrote (.mp4, .mkv, .mov)")
    r.add_argument("--output", "-o", default=None, help="where the replay goes (default: VIDEO's name with -replay, beside it)")
    r.add_argument("--model", default=None, metavar="PATH", help="the model where it lives now (default: where the video was made from); its weights must be the same")
    r.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: the device the video was made on)")
    r.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    return parser


# ------------------------------------------------------------------------------------------------
# generate
# ------------------------------------------------------------------------------------------------
def _add_long_video(g: argparse.ArgumentParser) -> None:
    g.add_argument("--prompt-frames", type=_frame_list, default=None, metavar="N,N,...", help="with several --prompt: the frames of each, e.g. 33,32 (default: --frames shared evenly)")
    g.add_argument(
        "--window", type=int, default=None, metavar="N",
        help="frames per window: a video longer than this (--frames) or with several --prompt is made in windows, each continuing the last (default: the model's clip)",
    )  # fmt: skip
    g.add_argument("--overlap", type=int, default=None, metavar="K", help="in windows: the frames before each window it sees as the past (default: as many as the model can see)")


def _add_parallel(g: argparse.ArgumentParser) -> None:
    """Several processes on one video: ``torchrun --nproc-per-node N -m kinema generate ...``."""
    g.add_argument(
        "--sequence-parallel", type=int, default=None, metavar="N",
        help="under torchrun: split each denoiser call's video tokens over N processes (Ulysses all-to-all over the heads, ring attention for the rest, as xDiT's USP); default: every process --guidance-parallel leaves",
    )  # fmt: skip
    g.add_argument(
        "--guidance-parallel", type=int, choices=(1, 2), default=None, metavar="G",
        help="under torchrun: 2 runs the conditional and unconditional passes on two halves of the processes (xDiT's --use_cfg_parallel); without guidance both halves run the one pass (default 1)",
    )  # fmt: skip
    g.add_argument("--ulysses-degree", type=int, default=None, metavar="U", help="under torchrun: processes of each all-to-all group, dividing --sequence-parallel and the model's heads; the rest form the ring (default: the most that divide the heads)")


def parallel_plan_from_args(args: argparse.Namespace):
    """The processes torchrun started and the parallel flags as a :class:`~kinema.parallel.ParallelPlan`
    (None: one process). Refused in one line: degrees whose product is not the number of processes,
    flags that need processes this run does not have (a memory plan is refused by ``generate``)."""
    from .parallel.groups import current
    from .parallel.plan import ParallelPlan

    world = current().size
    if world == 1:
        wanted = ParallelPlan(*(1 if v is None else v for v in (args.sequence_parallel, args.guidance_parallel)), args.ulysses_degree)  # its degrees checked
        if wanted.world_size > 1:
            raise KinemaError(
                f"--sequence-parallel and --guidance-parallel ask for {wanted.world_size} processes; this is one: "
                f"launch with torchrun --nproc-per-node {wanted.world_size} -m kinema generate ..."
            )
        return None
    return ParallelPlan.for_world(world, args.sequence_parallel, args.guidance_parallel, args.ulysses_degree)


def _frame_list(text: str) -> list[int]:
    """--prompt-frames: comma-separated whole numbers."""
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected whole numbers separated by commas, e.g. 33,32; got {text!r}") from None


def prompts_from_args(args: argparse.Namespace, example: str) -> tuple[str | None, list | None]:
    """The prompt, or the prompt schedule when --prompt is given more than once (with --prompt-frames)."""
    given = list(args.prompt or [])
    if args.prompt_pos is not None:
        if given:
            raise KinemaError("give the prompt once: either positionally or with --prompt (repeat --prompt for a prompt schedule)")
        given = [args.prompt_pos]
    if not given:
        raise KinemaError(f"no prompt: {example}")
    frames = args.prompt_frames
    if frames is not None and len(frames) != len(given):
        raise KinemaError(f"--prompt-frames has {len(frames)} numbers for {len(given)} --prompt; give one per prompt")
    if len(given) == 1 and frames is None:
        return given[0], None
    return None, [[p, f] for p, f in zip(given, frames or [None] * len(given))]


def request_from_args(args: argparse.Namespace):
    """The command line's ``generate`` flags as a :class:`~kinema.request.GenerationRequest`."""
    from .request import GenerationRequest

    prompt, schedule = prompts_from_args(args, 'kinema generate "a red circle moving left"')
    width, height = args.size if args.size else (None, None)
    return GenerationRequest(
        prompt=prompt, prompt_schedule=schedule, window=args.window, overlap=args.overlap, model=args.model, negative_prompt=args.negative_prompt, height=height, width=width,
        num_frames=args.frames, num_inference_steps=args.steps, guidance_scale=args.guidance, shift=args.shift, cache_threshold=args.cache,
        sampler=args.sampler, seed=args.seed, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        typical_p=args.typical_p, image=args.image, max_area=args.max_area[0] * args.max_area[1] if args.max_area else None, video=args.input, strength=args.strength, output=args.output,
        device=args.device, dtype=args.dtype, quantize=args.quantize, max_memory=args.max_memory, offload=args.offload,
        prompt_extend=args.prompt_extend,
    )  # fmt: skip


def cmd_generate(args: argparse.Namespace) -> int:
    """One process, or under torchrun every process: all compute, rank 0 alone writes and prints
    (the others stay silent, also when a request is refused, and exit 0 when it is done)."""
    import torch.distributed as dist

    from .parallel import groups

    joined = dist.is_available() and dist.is_initialized()  # a group the caller made stays theirs
    try:
        return _said_once(lambda: _generate(args))
    finally:
        if not joined:
            groups.shutdown()


def _said_once(run) -> int:
    """``run()`` in one of the processes torchrun started (or the only one): a refusal is raised,
    to be said in one line, by rank 0 alone; the other processes exit 2 without a word."""
    from .parallel import groups

    main_rank = groups.current().main
    try:
        return run()
    except KinemaError:
        if main_rank:
            raise
        return 2


def _generate(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .generation import generate
    from .runtime import configure_threads, contention_hint, usable_cores

    t0 = time.perf_counter()
    request = request_from_args(args)
    plan = parallel_plan_from_args(args)
    threads_flag, quiet, main_rank = args.threads, args.quiet, True
    if plan is not None:
        from .parallel import groups
        from .pipelines.loading import resolve_device

        device = groups.local_device(resolve_device(args.device))  # cuda: this process's LOCAL_RANK
        world = groups.init_from_env(device)
        request = replace(request, device=str(device))
        if device.type == "cpu" and threads_flag is None:  # the host's cores shared by its processes
            threads_flag = groups.cores_per_process(usable_cores())
        main_rank, quiet = world.main, args.quiet or not world.main
    threads = configure_threads(threads_flag)
    hint = contention_hint(threads) if threads_flag is None and not quiet else None  # the load before our own work
    if args.input is None and args.strength is not None:
        raise KinemaError("--strength applies to video-to-video: give --input too")
    done = generate(request, write=main_rank, progress_bar=not quiet, callback=_stop_if_interrupted, parallel=plan)
    if not main_rank:
        return 0
    frames = done.output.frames
    n, h, w = frames.shape[1:4]
    if args.timings:
        report = {"timings_s": {k: round(v, 3) for k, v in done.timings.items()}, "threads": threads, "memory": done.memory}
        print(json.dumps(report), file=sys.stderr)
    elif "plan" in done.memory and not args.quiet:
        peak = done.memory.get("peak_bytes")
        print(done.memory["plan"] + (f"; peak {peak / (1 << 30):.2f} GiB" if peak else ""), file=sys.stderr)
    extended = done.metadata[0].get("extra", {}).get("prompt_extend") if done.metadata else None
    if extended and not args.quiet:
        print(f"prompt extended by {extended['model']}: {json.dumps(done.request.prompt, ensure_ascii=False)}", file=sys.stderr)
    if hint:  # said after the work, so that a refused request stays one line
        print(hint, file=sys.stderr)
    if not args.quiet:
        where = ", ".join(str(p) for p in done.paths)
        over = f" over {plan.world_size} processes" if plan is not None else ""
        print(f"wrote {where} ({n} frames, {w}x{h}, {done.output.fps:g} fps) in {time.perf_counter() - t0:.1f} s{over}", file=sys.stderr)
    return 0


def cmd_extend(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .generation import generate
    from .request import GenerationRequest
    from .runtime import configure_threads

    t0 = time.perf_counter()
    prompt, schedule = prompts_from_args(args, 'kinema extend INPUT.mp4 "the circle turns and moves right"')
    source = Path(args.input)
    from .video import CONTAINER_FORMATS

    suffix = source.suffix if source.suffix.lower() in CONTAINER_FORMATS else ".mp4"  # a .png, .gif or .webm input: an mp4 beside it
    output = args.output or str(source.with_name(f"{source.stem}-extended{suffix}"))
    if Path(output).resolve() == source.resolve():
        raise KinemaError(f"--output is the input video {args.input}; write the extension elsewhere")
    request = GenerationRequest(
        prompt=prompt, prompt_schedule=schedule, window=args.window, model=args.model, negative_prompt=args.negative_prompt, num_frames=args.frames, guidance_scale=args.guidance,
        num_inference_steps=args.steps, shift=args.shift, sampler=args.sampler, cache_threshold=args.cache, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, typical_p=args.typical_p, seed=args.seed,
        extend=args.input, overlap=args.overlap, output=output, device=args.device, dtype=args.dtype,
    )  # fmt: skip
    configure_threads(args.threads)
    done = generate(request, progress_bar=not args.quiet, callback=_stop_if_interrupted)
    if not args.quiet:
        n, h, w = done.output.frames.shape[1:4]
        print(f"wrote {done.paths[0]} ({n} frames: the input's, then {done.request.num_frames} new; {w}x{h}, "
              f"{done.output.fps:g} fps) in {time.perf_counter() - t0:.1f} s", file=sys.stderr)  # fmt: skip
    return 0


# ------------------------------------------------------------------------------------------------
# train, package, info
# ------------------------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    """One process, or under torchrun every process (``torchrun --nproc-per-node N -m kinema train``):
    all train, rank 0 alone prints (the others stay silent, also when the run is refused)."""
    from .parallel import groups
    from .training import train

    if args.steps is not None and args.steps < 1:
        raise KinemaError(f"--steps must be a positive integer; got {args.steps}")
    device = {} if args.device is None else {"device": args.device}

    def run() -> int:
        out = train(args.config, resume=args.resume, steps=args.steps, progress=not args.no_progress, **device)
        if groups.current().main:
            print(f"model written to {out}")
        return 0

    return _said_once(run)


def cmd_package(args: argparse.Namespace) -> int:
    from .pipelines.package import package_trained_model

    if args.steps is not None and args.steps < 1:
        raise KinemaError(f"--steps must be a positive integer; got {args.steps}")
    if args.shift is not None and not args.shift > 0:
        raise KinemaError(f"--shift must be positive; got {args.shift}")
    flags = {  # card entry -> its flag's value; package_trained_model refuses those the run's kind has no use for
        "sampler": {"name": args.sampler, "shift": args.shift, "temperature": args.temperature, "top_k": args.top_k,
                    "top_p": args.top_p, "typical_p": args.typical_p},
        "defaults": {"num_inference_steps": args.steps, "guidance_scale": args.guidance, "fps": args.fps},
    }  # fmt: skip
    sampler, defaults = ({k: v for k, v in flags[s].items() if v is not None} for s in ("sampler", "defaults"))
    out = package_trained_model(
        args.transformer, args.out, vae_dir=args.vae, tokenizer_dir=args.tokenizer, sampler=sampler, defaults=defaults
    )
    print(f"model written to {out}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .pipelines.info import describe

    print(json.dumps(describe(args.target), indent=2))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .pipelines.memory import parse_bytes
    from .server.app import serve

    for flag, value, low in (("--port", args.port, 0), ("--max-tries", args.max_tries, 1), ("--max-queued", args.max_queued, 1)):
        if value < low or (flag == "--port" and value > 65535):
            raise KinemaError(f"{flag} must be {'a port from 0 to 65535' if flag == '--port' else f'at least {low}'}; got {value}")
    if args.stop_after is not None and not args.stop_after > 0:
        raise KinemaError(f"--stop-after must be a positive number of seconds; got {args.stop_after:g}")
    cache = parse_bytes(args.cache_memory, "--cache-memory") if args.cache_memory is not None else None
    upload = parse_bytes(args.max_upload, "--max-upload")
    serve(models=args.model, host=args.host, port=args.port, queue_dir=args.queue, api_key=args.api_key, devices=args.device,
          cache_bytes=cache, max_tries=args.max_tries, max_upload_bytes=upload, max_queued=args.max_queued,
          prompt_extend=args.prompt_extend, ui=not args.no_ui, stop_after=args.stop_after, threads=args.threads)  # fmt: skip
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    import warnings

    from .replay import ReplayNote, replay

    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as notes:
        warnings.simplefilter("always", ReplayNote)
        out = replay(args.video, output=args.output, model=args.model, device=args.device, progress_bar=not args.quiet, callback=_stop_if_interrupted)
    for note in notes:
        if issubclass(note.category, ReplayNote):
            print(f"note: {note.message}", file=sys.stderr)
        else:
            warnings.showwarning(note.message, note.category, note.filename, note.lineno)
    if not args.quiet:
        print(f"wrote {out} (a replay of {args.video}) in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------------------------
# eval
# ------------------------------------------------------------------------------------------------
def _eval_request(args: argparse.Namespace, model: str):
    """The sampling part of ``eval --model`` / ``--reconstruct`` as a request (the prompts come from the prompt set)."""
    from .request import GenerationRequest

    return GenerationRequest(
        model=model, height=args.size, width=args.size, num_frames=args.frames, num_inference_steps=args.steps,
        sampler=args.sampler, guidance_scale=args.guidance, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        typical_p=args.typical_p, seed=args.seed, device=args.device,
    )  # fmt: skip


def cmd_eval(args: argparse.Namespace) -> int:
    from .checkpoints.io import check_output_path
    from .evaluation.cli_eval import (
        CodecOnly,
        generate_set,
        is_codec_dir,
        reconstruct_reference_set,
        render_reference_set,
        run_eval,
    )
    from .runtime import configure_threads

    for flag, value in (("--limit", args.limit), ("--per-prompt", args.per_prompt), ("--size", args.size), ("--frames", args.frames)):
        if value is not None and value < 1:
            raise KinemaError(f"{flag} must be a positive integer; got {value}")
    if not args.model:
        given = [flag for flag, value in (("--steps", args.steps), ("--guidance", args.guidance), ("--sampler", args.sampler), ("--temperature", args.temperature),
                 ("--top-k", args.top_k), ("--top-p", args.top_p), ("--typical-p", args.typical_p)) if value is not None]  # fmt: skip
        if given:
            source = "--clips" if args.clips else "--reference" if args.reference else "--reconstruct"
            raise KinemaError(f"{', '.join(given)} set how --model samples; {source} samples nothing, so remove {'them' if len(given) > 1 else 'it'}")
        if args.device is not None and not args.reconstruct:
            raise KinemaError(f"--device is for --model and --reconstruct; {'--clips' if args.clips else '--reference'} runs no model")
    if args.json is not None:
        check_output_path(args.json, what="--json")
    if not args.clips:
        check_output_path(args.out, what="--out", directory=True)
    configure_threads(args.threads)
    clips = args.clips
    if not args.model:  # the model's own size and length apply with --model
        from .data.shapes import DEFAULT_FRAMES, DEFAULT_SIZE

        args.size, args.frames = args.size or DEFAULT_SIZE, args.frames or DEFAULT_FRAMES
    if args.reference:
        clips = render_reference_set(
            args.out, args.split, args.size, args.frames, args.seed, style=args.style, limit=args.limit, per_prompt=args.per_prompt
        )
    elif args.reconstruct:
        if is_codec_dir(args.reconstruct):  # a VAE's or tokenizer's own folder (a training run's model/)
            pipe = CodecOnly(args.reconstruct, args.size, args.frames, device=args.device)
        else:
            pipe, _ = _load_for_eval(_eval_request(args, args.reconstruct))
        clips = reconstruct_reference_set(
            pipe, args.out, args.split, args.size, args.frames, args.seed, style=args.style, limit=args.limit, per_prompt=args.per_prompt
        )
    elif args.model:
        pipe, request = _load_for_eval(_eval_request(args, args.model), steps=EVAL_STEPS)
        options = {name: getattr(request, name) for name in pipe.rules.sampling_options if getattr(request, name) is not None}
        if request.height != request.width:
            raise KinemaError(f"eval clips are square; this model's default size is {request.width}x{request.height}: pass --size")
        clips = generate_set(
            pipe, args.out, args.split, request.height, request.num_frames, args.seed, style=args.style,
            guidance_scale=args.guidance, options=options, limit=args.limit, per_prompt=args.per_prompt,
        )  # fmt: skip
    report = run_eval(clips, out_json=args.json)
    print(json.dumps({k: report[k] for k in ("seen", "held_out", "all") if k in report}))
    return 0


def _load_for_eval(request, steps: int | None = None):
    """Check an eval's request against the model (before loading), then load it; a diffusion model
    samples ``steps`` steps unless the request says otherwise. Returns (pipeline, filled request)."""
    import dataclasses

    from .evaluation.cli_eval import EVAL_BATCH
    from .pipelines.loading import load_pipeline, resolve_device, resolve_model
    from .runtime import available_memory

    layout = resolve_model(request.model)
    rules = layout.rules()
    if steps is not None and request.num_inference_steps is None and "num_inference_steps" in rules.sampling_options:
        request = dataclasses.replace(request, num_inference_steps=steps)
    device = resolve_device(request.device)
    request = request.checked(rules, free_bytes=available_memory(device), batch=EVAL_BATCH)
    return load_pipeline(layout, device=device), request


# ------------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------------
COMMANDS = {"generate": cmd_generate, "train": cmd_train, "package": cmd_package, "eval": cmd_eval, "info": cmd_info, "replay": cmd_replay, "serve": cmd_serve, "extend": cmd_extend}


def main(argv: list[str] | None = None) -> int:
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as e:  # usage errors (status 2) and --help (status 0)
            return int(e.code or 0)
        return COMMANDS[args.command](args)
    except KinemaError as e:
        if _INTERRUPTED:  # an error that a Ctrl-C caused (a load cut short) is the interrupt
            sys.stderr.write("interrupted\n")
            return 130
        message = e.render(FLAGS) if isinstance(e, RequestError) else str(e)
        sys.stderr.write(f"error: {' '.join(message.split())}\n")
        return 2
    except (KeyboardInterrupt, Cancelled):
        sys.stderr.write("interrupted\n")
        return 130
    except BrokenPipeError:  # `kinema info X | head`: the reader left; no traceback, no second error at exit
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


_INTERRUPTED = []  # set by the console script's Ctrl-C handler


def _on_sigint(signum, frame) -> None:
    _INTERRUPTED.append(signum)
    raise KeyboardInterrupt


def _stop_if_interrupted(progress) -> None:
    """``generate``'s callback: a Ctrl-C that some library swallowed while it was importing still
    stops the run at the next stage or step."""
    if _INTERRUPTED:
        raise Cancelled("interrupted")


def quiet_interrupts(hook):
    """``sys.unraisablehook`` that says nothing of a KeyboardInterrupt and passes the rest to ``hook``.

    A Ctrl-C that lands in a callback Python cannot raise from (an import's module-lock weakref
    callback, a ``__del__``) would print "Exception ignored in ..." and a traceback; the handler has
    noted it in ``_INTERRUPTED``, and the run stops at its next stage or step, in one line."""

    def quiet(unraisable) -> None:
        if not isinstance(unraisable.exc_value, KeyboardInterrupt):
            hook(unraisable)

    return quiet


def entry() -> None:
    """The console script: :func:`main`, with Ctrl-C during Python's own start-up (imports) also
    ending in one line. A Ctrl-C that lands inside a C extension's import (numpy, torch) can come
    out as some other error there (numpy: "cannot load module more than once per process"): once
    Ctrl-C was pressed, any error that follows is the interrupt's."""
    import signal

    signal.signal(signal.SIGINT, _on_sigint)
    sys.unraisablehook = quiet_interrupts(sys.unraisablehook)
    try:
        code = main()
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        code = 130
    except Exception:
        if not _INTERRUPTED:
            raise
        sys.stderr.write("interrupted\n")
        code = 130
    if _INTERRUPTED and code == 130:
        # Handled or not, a Ctrl-C that lands in torch's import can still end `python -m kinema.cli`
        # by SIGINT (status -2 to a parent process) after this line was written: seen in about one
        # run in three at one moment of the import; the cause is in the interpreter's exit. Exit now.
        import os

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    raise SystemExit(code)


if __name__ == "__main__":
    entry()
