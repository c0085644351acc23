"""Precomputed encodings of a training data set: the latent cache (a frozen VAE's posteriors, for a
transformer) and the token cache (a frozen VQ tokenizer's ids, for a token model).

A cache file (safetensors) holds the encodings and, in its metadata, the captions and the key it
was built for (:func:`encoding_cache_key`: the data config and the encoder's files); a cache whose
key differs is rebuilt.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from ..checkpoints.io import load_safetensors, safetensors_metadata, save_safetensors

CACHE_BATCH = 16  # clips encoded together when building a cache (one at a time is ~5x slower on a CPU)


class LatentCacheDataset(torch.utils.data.Dataset):
    """Items of a latent cache: ``mean`` and ``logvar`` (z, F', h, w) of the VAE posterior, ``caption``,
    ``past`` (how many first frames show an earlier clip) where the data set says it, and
    ``roundtrip_mean`` / ``roundtrip_logvar`` (z, K', h, w) where the cache holds the first latent
    frames' round trip (:func:`codec_roundtrip`)."""

    def __init__(self, mean: torch.Tensor, logvar: torch.Tensor, captions: list[str], past: list[int] | None = None,
                 roundtrip: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:  # fmt: skip
        self.mean, self.logvar, self.captions, self.past, self.roundtrip = mean, logvar, captions, past, roundtrip

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, index: int) -> dict:
        item = {"mean": self.mean[index], "logvar": self.logvar[index], "caption": self.captions[index]}
        if self.past is not None:
            item["past"] = self.past[index]
        if self.roundtrip is not None:
            item["roundtrip_mean"], item["roundtrip_logvar"] = self.roundtrip[0][index], self.roundtrip[1][index]
        return item


class TokenCacheDataset(torch.utils.data.Dataset):
    """Items of a token cache: ``tokens`` (F', h, w) long ids of the tokenizer, ``caption``, and
    ``past`` where the data set says it (as :class:`LatentCacheDataset`)."""

    def __init__(self, tokens: torch.Tensor, captions: list[str], past: list[int] | None = None) -> None:
        self.tokens, self.captions, self.past = tokens, captions, past  # tokens (n, F', h, w), int16 or int32 as stored

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, index: int) -> dict:
        item = {"tokens": self.tokens[index].long(), "caption": self.captions[index]}
        if self.past is not None:
            item["past"] = self.past[index]
        return item


def encoding_cache_key(data: Any, encoder_path: str | os.PathLike) -> str:
    """What a cache depends on: the data config and the frozen encoder (its path, and the size and
    modification time of its weights files, so retraining the encoder invalidates the cache)."""
    encoder = Path(encoder_path).resolve()
    files = sorted(encoder.glob("*.safetensors")) + sorted(encoder.glob("*.pth")) if encoder.is_dir() else [encoder]
    stamps = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file()]
    return hashlib.sha256(json.dumps([dataclasses.asdict(data), str(encoder), stamps], default=str).encode()).hexdigest()[:16]


def _cached(path: Path, key: str) -> tuple[dict[str, torch.Tensor], list[str]] | None:
    """A cache file's tensors and captions if it exists and was built for ``key``, else None."""
    if path.is_file() and safetensors_metadata(path).get("key") == key:
        return load_safetensors(path), json.loads(safetensors_metadata(path)["captions"])
    return None


def _encode_all(dataset, encode, desc: str) -> tuple[list[dict[str, torch.Tensor]], list[str]]:
    """Run ``encode`` (a batch of videos (n, 3, F, H, W) -> a dict of (n, ...) tensors) over the
    whole data set in batches of CACHE_BATCH, without gradients; returns the outputs and captions."""
    outs, captions = [], []
    from tqdm import tqdm

    with torch.no_grad():
        for start in tqdm(range(0, len(dataset), CACHE_BATCH), desc=desc, leave=False):
            items = [dataset[i] for i in range(start, min(start + CACHE_BATCH, len(dataset)))]
            outs.append(encode(torch.stack([item["video"] for item in items])))
            captions += [item["caption"] for item in items]
    return outs, captions


def _pasts(dataset) -> list[int] | None:
    """Each item's past (frames of an earlier clip it starts with), looked up without rendering
    where the data set can (shapes' ``past_of``); None where it cannot."""
    past_of = getattr(dataset, "past_of", None)
    return [past_of(i) for i in range(len(dataset))] if past_of is not None else None


def latent_cache(path: Path, key: str, dataset, vae, roundtrip_frames: int = 0) -> LatentCacheDataset:
    """Load the cache at ``path`` if its key matches; otherwise encode every item once and write it.

    Stores the posterior's mean and log-variance (not a sample), so training still draws a fresh
    latent per step from the step's generator. With ``roundtrip_frames``, a second file beside it
    (``<name>-roundtrip.safetensors``, built from the first's means) holds the round trip of each
    item's first ``roundtrip_frames`` latent frames (:func:`codec_roundtrip`).
    """
    past = _pasts(dataset)
    found = _cached(path, key)
    if found is not None:
        mean, logvar, captions = found[0]["mean"], found[0]["logvar"], found[1]
    else:

        def encode(video: torch.Tensor) -> dict[str, torch.Tensor]:
            posterior = vae.encode(video)  # (n, z, F', h, w)
            return {"mean": posterior.mean.float().cpu(), "logvar": posterior.logvar.float().cpu()}

        outs, captions = _encode_all(dataset, encode, "latent cache")
        mean, logvar = torch.cat([o["mean"] for o in outs]), torch.cat([o["logvar"] for o in outs])
        save_safetensors({"mean": mean, "logvar": logvar}, path, metadata={"key": key, "captions": json.dumps(captions)})
    roundtrip = _roundtrip_cache(path.with_name(f"{path.stem}-roundtrip.safetensors"), f"{key}:{roundtrip_frames}", mean, vae, roundtrip_frames) if roundtrip_frames else None
    return LatentCacheDataset(mean, logvar, captions, past, roundtrip)


def codec_roundtrip(vae, mean: torch.Tensor, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """What a generated past goes through before a later window reads it: the posterior means of
    clips' first ``frames`` latent frames (n, z, F', h, w), decoded, rounded to 8-bit frames as a
    video is, and encoded again. Returns that posterior's mean and log-variance (n, z, frames, h, w)
    float32 on the CPU. The codec is causal, so the first k of these are the round trip of the
    first k latent frames alone."""
    from ..video import to_uint8

    with torch.no_grad():
        frames_u8 = to_uint8(vae.decode(mean[:, :, :frames].to(vae.device, vae.dtype)))  # (n, F, H, W, 3): the frames a video file gets
        video = frames_u8.permute(0, 4, 1, 2, 3).float() / 255 * 2 - 1  # (n, 3, F, H, W) in [-1, 1]
        posterior = vae.encode(video.to(vae.dtype))
    return posterior.mean.float().cpu(), posterior.logvar.float().cpu()


def _roundtrip_cache(path: Path, key: str, mean: torch.Tensor, vae, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The round trip of every cached item's first ``frames`` latent frames, loaded from ``path`` if
    built for ``key``, else computed in batches of CACHE_BATCH and written there."""
    found = _cached(path, key)
    if found is not None:
        return found[0]["mean"], found[0]["logvar"]
    from tqdm import tqdm

    outs = [codec_roundtrip(vae, mean[i : i + CACHE_BATCH], frames) for i in tqdm(range(0, len(mean), CACHE_BATCH), desc="round-trip cache", leave=False)]
    rt_mean, rt_logvar = torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])
    save_safetensors({"mean": rt_mean, "logvar": rt_logvar}, path, metadata={"key": key, "captions": "[]"})
    return rt_mean, rt_logvar


def token_cache(path: Path, key: str, dataset, tokenizer) -> TokenCacheDataset:
    """Load the token cache at ``path`` if its key matches; otherwise encode every item once through
    the frozen tokenizer and write it. Ids are stored as int16 when the codebook fits (32,768 codes
    or fewer), else int32: (n, F', h, w) under "tokens", the captions in the metadata."""
    found = _cached(path, key)
    if found is not None:
        return TokenCacheDataset(found[0]["tokens"], found[1], _pasts(dataset))
    dtype = torch.int16 if tokenizer.codebook_size <= torch.iinfo(torch.int16).max + 1 else torch.int32
    outs, captions = _encode_all(dataset, lambda video: {"tokens": tokenizer.encode_tokens(video).to("cpu", dtype)}, "token cache")
    tokens = torch.cat([o["tokens"] for o in outs])  # (n, F', h, w)
    save_safetensors({"tokens": tokens}, path, metadata={"key": key, "captions": json.dumps(captions)})
    return TokenCacheDataset(tokens, captions, _pasts(dataset))
