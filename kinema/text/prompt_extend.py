"""Prompt extension: a local instruction-tuned LM rewrites a short prompt into a detailed one.

Wan 2.1's ``--use_prompt_extend`` has Qwen2.5 Instruct expand "a cat on a sofa" into the kind of
long, concrete caption its videos were trained on. :class:`PromptExtender` does the same with any
causal LM saved with ``save_pretrained`` in a local directory: read through transformers with
``local_files_only=True`` and ``trust_remote_code=False``, safetensors weights only (kinema never
unpickles a downloaded file). Sampling is seeded from the prompt and the request's seed, on forked
RNG state, so the same request gives the same extended prompt and the caller's RNG is untouched.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path
from typing import Any, Iterator

import torch

from ..errors import CheckpointError, KinemaError
from ..request import MAX_PROMPT_CHARS
from ..schema import short
from ..seeds import derive_seed

EXTEND_INSTRUCTION = (
    "You turn a short prompt for a video generator into one detailed description of the video. "
    "Say what the subject is and looks like (colours, shapes, sizes, materials), how it moves and in "
    "which direction, how the camera sees it and moves, what the background is, and what the light is "
    "like. Keep every fact of the short prompt and add nothing that contradicts it. Write a single "
    "paragraph of plain sentences, at most about 80 words: no lists, no headings, no quotes, no "
    "introduction or comment of your own. Write in the language of the short prompt."
)

MAX_NEW_TOKENS = 4096  # the most tokens an extension may ask for (Wan asks for 512)
TEMPERATURE = 0.7  # moderate: varied wording, few derailments
TOP_P = 0.9

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model", "sentencepiece.bpe.model")
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_HINT = "give --prompt-extend the directory of a local instruction-tuned causal LM (e.g. Qwen2.5-3B-Instruct) saved with save_pretrained"


def check_extend_dir(path: str | os.PathLike) -> Path:
    """``path`` as a Path if it looks like a usable prompt-extension model: a directory with a causal-LM
    ``config.json``, tokenizer files and readable safetensors weights. Reads headers only, no weights."""
    if not isinstance(path, (str, os.PathLike)) or not str(path).strip():
        raise KinemaError(f"the prompt-extension model must be a directory path; got {short(path)}")
    directory = Path(path).expanduser()
    if not directory.exists():
        raise CheckpointError(f"prompt-extension model not found: {directory}; {_HINT}")
    if not directory.is_dir():
        raise CheckpointError(f"the prompt-extension model {directory} is a file, not a directory; {_HINT}")
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{directory} has no config.json, so it is not a transformers model directory; {_HINT}")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{config_path} is not readable JSON ({_one_line(e)[:120]}); {_HINT}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_path} must hold a JSON object; got {type(config).__name__}; {_HINT}")
    _check_causal(config, directory)
    if not any((directory / name).is_file() for name in _TOKENIZER_FILES):
        raise CheckpointError(
            f"{directory} has no tokenizer files ({', '.join(_TOKENIZER_FILES[:4])}, ...); save the model's tokenizer "
            "into the same directory (tokenizer.save_pretrained)"
        )
    _check_weights(directory)
    return directory


def _check_causal(config: dict, directory: Path) -> None:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES as causal

    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise CheckpointError(f"{directory}/config.json names no model_type, so transformers cannot build it; {_HINT}")
    if model_type not in causal:
        raise CheckpointError(
            f"{directory} holds a {model_type!r} model, which is not a text-generating (causal) LM (an encoder?); {_HINT}"
        )
    if config.get("is_decoder") is False:  # BERT-like families are encoders unless configured as decoders
        raise CheckpointError(f"{directory} holds a {model_type!r} encoder (is_decoder is false), not a text-generating LM; {_HINT}")
    names = {n for v in causal.values() for n in ((v,) if isinstance(v, str) else v)}
    architectures = config.get("architectures")
    if isinstance(architectures, list) and architectures and not any(
        isinstance(a, str) and (a in names or a.endswith(("ForCausalLM", "LMHeadModel"))) for a in architectures
    ):
        raise CheckpointError(
            f"{directory} holds a {'/'.join(map(str, architectures))}, which has no language-model head to write text with; {_HINT}"
        )


def _check_weights(directory: Path) -> None:
    from safetensors import SafetensorError, safe_open

    index = directory / "model.safetensors.index.json"
    files = sorted(directory.glob("*.safetensors"))
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{index} is not a valid safetensors index ({_one_line(e)[:120]}); re-save the model") from None
        missing = sorted(s for s in shards if not isinstance(s, str) or not (directory / s).is_file())
        if missing:
            raise CheckpointError(f"{directory} lacks {len(missing)} weight shard(s) its index names (e.g. {missing[0]}); copy the whole model directory")
        files = sorted({*files, *(directory / s for s in shards)})
    if not files:
        pickles = sorted(p.name for p in directory.iterdir() if p.suffix.lower() in _PICKLE_SUFFIXES and p.is_file())
        if pickles:
            raise CheckpointError(
                f"{directory} has weights only as pickles ({', '.join(pickles[:3])}), which kinema does not load for safety; "
                "convert them to safetensors (model.save_pretrained(dir, safe_serialization=True))"
            )
        raise CheckpointError(f"{directory} has no weights (*.safetensors); copy the model's weight files into it")
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as handle:
                handle.keys()
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:  # a header that does not parse
            raise CheckpointError(f"{f} is not a readable safetensors file (truncated or corrupt? {_one_line(e)[:120]}); copy it again") from None


class PromptExtender:
    """A local instruction-tuned causal LM that rewrites short video prompts into detailed ones.

    Args:
        model_dir: a directory saved with ``save_pretrained`` (model and tokenizer), checked by
            :func:`check_extend_dir` before anything loads.
        device: where the model runs (float32 on CPU, bfloat16 elsewhere).
        max_new_tokens: the most tokens one extension may write.
    """

    def __init__(self, model_dir: str | os.PathLike, *, device: str | torch.device = "cpu", max_new_tokens: int = 160) -> None:
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
            raise KinemaError(f"max_new_tokens must be a whole number from 1 to {MAX_NEW_TOKENS}; got {short(max_new_tokens)}")
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError) as e:
            raise KinemaError(f"device must be a torch device such as 'cpu' or 'cuda'; got {short(device)} ({_one_line(e)[:80]})") from None
        self.path = check_extend_dir(model_dir)
        self.name = self.path.resolve().name
        self.max_new_tokens = max_new_tokens
        from transformers import AutoModelForCausalLM, AutoTokenizer

        common: dict[str, Any] = {"local_files_only": True, "trust_remote_code": False}
        with _quiet_transformers():
            self.tokenizer = _load(AutoTokenizer.from_pretrained, self.path, "tokenizer", **common)
            dtype = torch.float32 if self.device.type == "cpu" else torch.bfloat16
            model, info = _load(
                AutoModelForCausalLM.from_pretrained, self.path, "model", dtype=dtype, use_safetensors=True,
                output_loading_info=True, **common,
            )
        missing = list(info.get("missing_keys") or []) + [str(k) for k in info.get("mismatched_keys") or []]
        if missing:
            raise CheckpointError(
                f"{self.path}: the weights do not match config.json ({len(missing)} tensors missing or of the wrong shape, "
                f"e.g. {missing[0]}); re-save the model with save_pretrained"
            )
        self.model = model.to(self.device).eval().requires_grad_(False)

    def __repr__(self) -> str:
        return f"PromptExtender({self.name!r}, device={str(self.device)!r})"

    def model_input(self, prompt: str) -> str:
        """The text the model continues: the chat template (system instruction, user prompt, the
        assistant's turn) when the tokenizer has one, else a plain instruction-prompt-answer layout."""
        prompt = _check_prompt(prompt)
        if getattr(self.tokenizer, "chat_template", None):
            messages = [{"role": "system", "content": EXTEND_INSTRUCTION}, {"role": "user", "content": prompt}]
            try:
                return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            except Exception as e:  # noqa: BLE001 - jinja's errors and transformers' checks: one line
                raise CheckpointError(f"{self.path}: the tokenizer's chat template failed ({_one_line(e)[:120]}); fix its chat_template") from None
        return f"{EXTEND_INSTRUCTION}\n\nShort prompt: {prompt}\nDetailed prompt:"

    def extend(self, prompt: str, seed: int) -> str:
        """``prompt`` rewritten as a detailed one; the same prompt and seed give the same text."""
        prompt, seed = _check_prompt(prompt), _check_seed(seed)
        return self._generate(prompt, derive_seed("prompt-extend", seed, prompt))

    def extend_prompts(self, prompts: list[str], seed: int) -> list[str]:
        """Each prompt extended with its own seed, derived from ``seed``, its index and its text."""
        seed = _check_seed(seed)
        if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)):
            raise KinemaError(f"prompts must be a list of strings; got {short(prompts)}")
        prompts = [_check_prompt(p) for p in prompts]
        return [self._generate(p, derive_seed("prompt-extend", seed, i, p)) for i, p in enumerate(prompts)]

    @torch.no_grad()
    def _generate(self, prompt: str, torch_seed: int) -> str:
        text = self.model_input(prompt)
        chat = bool(getattr(self.tokenizer, "chat_template", None))
        # a chat template writes its own special tokens; a plain layout gets the tokenizer's (BOS), not a closing EOS
        enc = self.tokenizer(text, add_special_tokens=not chat, return_tensors="pt")
        ids, mask = enc["input_ids"], enc.get("attention_mask")
        eos = self.tokenizer.eos_token_id
        if not chat and eos is not None and ids.shape[1] > 1 and int(ids[0, -1]) == eos:
            ids = ids[:, :-1]
            mask = None if mask is None else mask[:, :-1]
        if mask is None:
            mask = torch.ones_like(ids)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos
        with _forked_rng(self.device, torch_seed), _quiet_transformers():
            out = self.model.generate(
                input_ids=ids.to(self.device), attention_mask=mask.to(self.device), do_sample=True,
                temperature=TEMPERATURE, top_p=TOP_P, max_new_tokens=self.max_new_tokens, pad_token_id=pad,
            )
        new = self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        result = " ".join(new.split())
        if not result:
            raise KinemaError(f"the prompt-extension model {self.name} wrote nothing for the prompt {short(prompt, 60)}; try another seed or model")
        if len(result) > MAX_PROMPT_CHARS:
            result = result[:MAX_PROMPT_CHARS].rsplit(" ", 1)[0]
        return result


def _check_prompt(prompt: Any) -> str:
    if not isinstance(prompt, str):
        raise KinemaError(f"a prompt to extend must be a string; got {short(prompt)}")
    if not prompt.strip():
        raise KinemaError("a prompt to extend must have words; got an empty prompt")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise KinemaError(f"a prompt to extend has {len(prompt):,} characters; at most {MAX_PROMPT_CHARS:,}")
    return re.sub(r"\s+", " ", prompt).strip()


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= 2**64 - 1:
        raise KinemaError(f"seed must be a whole number from 0 to 2**64-1; got {short(seed)}")
    return seed


@contextlib.contextmanager
def _forked_rng(device: torch.device, seed: int) -> Iterator[None]:
    """Seed the generators sampling on ``device`` uses, restoring the caller's state afterwards.
    Only the CPU generator (and the model's own CUDA device) is forked and seeded, so lazily
    initialised CUDA generators elsewhere are not touched either."""
    devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.default_generator.manual_seed(seed)
        if devices:
            torch.cuda.default_generators[devices[0]].manual_seed(seed)
        yield


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers' warnings and progress bars off for the block, the caller's settings back after."""
    from transformers.utils import logging as hf_logging

    verbosity, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()


def _load(fn, path: Path, what: str, **kwargs):
    try:
        return fn(str(path), **kwargs)
    except KinemaError:
        raise
    except Exception as e:  # noqa: BLE001 - transformers, tokenizers and safetensors raise many kinds: one line
        raise CheckpointError(f"could not load the prompt-extension {what} from {path}: {_one_line(e)[:300]}") from None


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__
