"""Print kinema's max abs difference from diffusers for each Wan component (text- and image-to-video)
and LTX-Video pipeline, in fp32.

The same measurements the parity tests assert (limit 1e-4), printed as figures: tiny random
components are built by diffusers, saved with ``save_pretrained``, loaded through kinema's real
loaders (and, for the original layout, rewritten with original keys first), and run on the same
inputs.

    python benchmarks/parity_report.py            # needs the test extra: pip install -e ".[test]"
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.helpers

import kinema  # noqa: E402
from kinema.checkpoints.wan import load_wan_transformer  # noqa: E402
from kinema.checkpoints.wan_vae import load_wan_vae  # noqa: E402
from tests.helpers import save_diffusers_wan_pipeline, save_original_wan_layout  # noqa: E402


def max_diff(a, b) -> float:
    return float((torch.as_tensor(a).float() - torch.as_tensor(b).float()).abs().max())


@torch.no_grad()
def main() -> None:
    torch.manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "wan"
        ref = save_diffusers_wan_pipeline(root, scheduler="unipc", shift=3.0)
        ref.set_progress_bar_config(disable=True)
        original = save_original_wan_layout(root, Path(tmp) / "wan-original")
        g = torch.Generator().manual_seed(0)

        # transformer: (B=2, 16, 3, 8, 8) latents, two timesteps, 20 text tokens
        x = torch.randn(2, 16, 3, 8, 8, generator=g)
        t = torch.tensor([999.0, 250.0])
        ctx = torch.randn(2, 20, 32, generator=g)
        padded = torch.cat([ctx, ctx.new_zeros(2, 492, 32)], 1)
        expected = ref.transformer(hidden_states=x, timestep=t, encoder_hidden_states=padded, return_dict=False)[0]
        for layout, path in (("diffusers", root / "transformer"), ("original", original)):
            ours = load_wan_transformer(path)(x, t, ctx)
            rows.append((f"transformer forward ({layout} files)", max_diff(ours, expected), float(expected.abs().max())))

        # VAE: 13 frames of 32x32 video -> latents -> video
        vae = load_wan_vae(root / "vae")
        video = torch.rand(1, 3, 13, 32, 32, generator=g) * 2 - 1
        post = ref.vae.encode(video).latent_dist
        ours = vae.encode(video)
        rows.append(("VAE encode, posterior mean", max_diff(ours.mean, post.mean), float(post.mean.abs().max())))
        rows.append(("VAE encode, posterior logvar", max_diff(ours.logvar, post.logvar), float(post.logvar.abs().max())))
        z = torch.randn(1, 16, 4, 4, 4, generator=g)
        dec = ref.vae.decode(z, return_dict=False)[0]
        rows.append(("VAE decode (4 latent frames)", max_diff(vae.decode(z), dec), float(dec.abs().max())))
        original_vae = load_wan_vae(original / "Wan2.1_VAE.pth")
        rows.append(("VAE decode (original .pth)", max_diff(original_vae.decode(z), dec), float(dec.abs().max())))

        # whole pipeline, same latents, UniPC shift 3, guidance 4, 4 steps, 9 frames of 32x32
        pipe = kinema.load_pipeline(root, device="cpu", dtype="float32")
        noise = torch.randn(1, 16, 3, 4, 4, generator=g)
        kw = dict(prompt="a red circle moving left", negative_prompt="blurry", height=32, width=32, num_frames=9,
                  num_inference_steps=4, guidance_scale=4.0)  # fmt: skip
        ref_latents = ref(**kw, latents=noise.clone(), output_type="latent").frames
        ref_video = ref(**kw, latents=noise.clone(), output_type="np").frames
        out = pipe(**kw, latents=noise.clone())
        rows.append(("pipeline latents (UniPC, CFG 4)", max_diff(out.latents, ref_latents), float(ref_latents.abs().max())))
        ours_video = (pipe.decode_latents(out.latents) / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 4, 1)
        rows.append(("pipeline video in [0, 1]", max_diff(ours_video, ref_video), 1.0))

        rows += wan_i2v_rows(Path(tmp))
        rows += ltx_rows(Path(tmp))

    print(f"{'component (fp32, vs diffusers)':40s} {'max abs diff':>12s} {'max |ref|':>10s}")
    for name, diff, scale in rows:
        print(f"{name:40s} {diff:12.2e} {scale:10.3f}")
    worst = max(d for _, d, _ in rows)
    print(f"worst: {worst:.2e} (limit 1e-4): {'OK' if worst <= 1e-4 else 'FAIL'}")
    sys.exit(0 if worst <= 1e-4 else 1)


@torch.no_grad()
def wan_i2v_rows(tmp: Path) -> list[tuple[str, float, float]]:
    """Wan image-to-video: the CLIP image encoder, the transformer with image states, the whole
    pipeline (same picture, same latents, UniPC, guidance 4), and the original release layout."""
    import numpy as np
    from PIL import Image

    from tests.helpers import save_diffusers_wan_i2v_pipeline, save_original_wan_i2v_layout

    root = tmp / "wan-i2v"
    ref = save_diffusers_wan_i2v_pipeline(root, shift=3.0)
    pipe = kinema.load_pipeline(root, device="cpu", dtype="float32")
    original = kinema.load_pipeline(save_original_wan_i2v_layout(root, tmp / "wan-i2v-original"), device="cpu", dtype="float32")
    rows = []
    g = torch.Generator().manual_seed(1)
    rng = np.random.RandomState(0)
    wide = Image.fromarray(rng.randint(0, 256, (40, 56, 3), dtype=np.uint8))  # resized and cropped by the processor
    want = ref.encode_image(wide, torch.device("cpu"))
    rows.append(("I2V CLIP image features (diffusers)", max_diff(pipe.image_encoder(wide), want), float(want.abs().max())))

    x = torch.randn(2, 36, 3, 8, 8, generator=g)
    t = torch.tensor([999.0, 250.0])
    ctx = torch.randn(2, 20, 32, generator=g)
    clip = torch.randn(2, 5, 1280, generator=g)
    padded = torch.cat([ctx, ctx.new_zeros(2, 492, 32)], 1)
    expected = ref.transformer(hidden_states=x, timestep=t, encoder_hidden_states=padded, encoder_hidden_states_image=clip, return_dict=False)[0]
    for layout, p in (("diffusers", pipe), ("original", original)):
        rows.append((f"I2V transformer forward ({layout} files)", max_diff(p.transformer(x, t, ctx, clip), expected), float(expected.abs().max())))

    picture = Image.fromarray(rng.randint(0, 256, (32, 32, 3), dtype=np.uint8))
    noise = torch.randn(1, 16, 3, 4, 4, generator=g)
    kw = dict(prompt="a red circle moving left", negative_prompt="blurry", height=32, width=32, num_frames=9,
              num_inference_steps=4, guidance_scale=4.0)  # fmt: skip
    want_latents = ref(image=picture, latents=noise.clone(), output_type="latent", **kw).frames
    want_video = ref(image=picture, latents=noise.clone(), output_type="np", **kw).frames
    out = pipe(image=picture, latents=noise.clone(), progress_bar=False, **kw)
    rows.append(("I2V pipeline latents (UniPC, CFG 4)", max_diff(out.latents, want_latents), float(want_latents.abs().max())))
    video = (pipe.decode_latents(out.latents) / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 4, 1)
    rows.append(("I2V pipeline video in [0, 1]", max_diff(video, want_video), 1.0))
    square = Image.fromarray(rng.randint(0, 256, (28, 28, 3), dtype=np.uint8))  # CLIP's size: both preprocessings keep it
    a = original(image=square, latents=noise.clone(), progress_bar=False, shift=3.0, **kw).latents
    b = pipe(image=square, latents=noise.clone(), progress_bar=False, **kw).latents
    rows.append(("I2V original layout vs diffusers layout", max_diff(a, b), float(b.abs().max())))
    return rows


@torch.no_grad()
def ltx_rows(tmp: Path) -> list[tuple[str, float, float]]:
    """LTX-Video's pipelines, as tests/parity/test_ltx_pipeline_parity.py compares them."""
    import diffusers

    from tests.helpers import save_diffusers_ltx_pipeline, save_original_ltx_layout
    from tests.parity import test_ltx_pipeline_parity as P

    ref = save_diffusers_ltx_pipeline(tmp / "ltx")
    rows = []
    layouts = (("", tmp / "ltx"), (" (single file)", save_original_ltx_layout(tmp / "ltx", tmp / "ltx-original")))
    kw = dict(prompt=P.PROMPT, negative_prompt=P.NEGATIVE, guidance_scale=3.0, **P.CALL)
    want_latents = P._unpack(ref(**kw, latents=P._pack(P._noise()), output_type="latent").frames)
    want_video = P._run_diffusers(ref, torch.Generator().manual_seed(7), **kw, latents=P._pack(P._noise()), output_type="np")
    for label, path in layouts:
        pipe = kinema.load_pipeline(path, device="cpu", dtype="float32")
        out = pipe(**kw, latents=P._noise(), output_type="latent")
        rows.append((f"LTX t2v latents{label}", max_diff(out.latents, want_latents), float(want_latents.abs().max())))
        video = P._video01(pipe, out.latents, torch.Generator().manual_seed(7))
        rows.append((f"LTX t2v video in [0, 1]{label}", max_diff(video, want_video), 1.0))
    i2v = diffusers.LTXImageToVideoPipeline(**ref.components)
    kw = dict(kw, image=P._image())
    want_latents = P._unpack(i2v(**kw, generator=torch.Generator().manual_seed(11), output_type="latent").frames)
    want_video = P._run_diffusers(i2v, torch.Generator().manual_seed(11), **kw, output_type="np")
    g = torch.Generator().manual_seed(11)
    out = pipe(**kw, generator=g, output_type="latent")  # g now stands where diffusers' did before decoding
    rows.append(("LTX i2v latents (same generator)", max_diff(out.latents, want_latents), float(want_latents.abs().max())))
    rows.append(("LTX i2v video in [0, 1]", max_diff(P._video01(pipe, out.latents, g), want_video), 1.0))
    return rows


if __name__ == "__main__":
    main()
