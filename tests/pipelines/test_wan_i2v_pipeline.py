"""Wan 2.1 image-to-video against diffusers' WanImageToVideoPipeline, through kinema's real loaders:
the CLIP image encoder (both layouts and their preprocessing), the whole pipeline, the original
release layout, Wan's size rule, and the one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import kinema
from kinema.checkpoints.layouts import detect_layout
from kinema.errors import CheckpointError, KinemaError
from kinema.image import CLIPImageEncoder
from kinema.image.clip import CLIP_MEAN, CLIP_STD
from kinema.pipelines.wan_i2v import WanI2VDefaults, WanImageToVideoPipeline
from tests.contracts import PipelineContract
from tests.helpers import save_diffusers_wan_i2v_pipeline, save_original_wan_i2v_layout

PROMPT = "a red circle moving left"
NEGATIVE = "blurry low quality"
CALL = dict(height=32, width=32, num_frames=9, num_inference_steps=4)
LATENT_SHAPE = (1, 16, 3, 4, 4)


def _picture(h: int, w: int, seed: int = 0):
    from PIL import Image

    return Image.fromarray(np.random.RandomState(seed).randint(0, 256, (h, w, 3), dtype=np.uint8))


def _noise(shape=LATENT_SHAPE, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _max_diff(a, b) -> float:
    return float((torch.as_tensor(a).detach().float() - torch.as_tensor(b).detach().float()).abs().max())


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("wan-i2v") / "diffusers"
    return root, save_diffusers_wan_i2v_pipeline(root, shift=3.0)


@pytest.fixture(scope="module")
def pipe(model):
    return kinema.load_pipeline(model[0], device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def original(model, tmp_path_factory):
    root = save_original_wan_i2v_layout(model[0], tmp_path_factory.mktemp("wan-i2v") / "Wan2.1-I2V-tiny")
    return root, kinema.load_pipeline(root, device="cpu", dtype="float32")


# ------------------------------------------------------------------------------------------------
# The image encoder
# ------------------------------------------------------------------------------------------------
def test_layouts_are_detected_as_image_to_video(pipe, original):
    assert isinstance(pipe, WanImageToVideoPipeline) and isinstance(original[1], WanImageToVideoPipeline)
    assert detect_layout(original[0]).pipeline == "wan-i2v"
    assert repr(pipe.image_encoder) == "CLIPImageEncoder(diffusers, 5 tokens of 1280)"
    assert repr(original[1].image_encoder) == "CLIPImageEncoder(wan-original, 5 tokens of 1280)"


@pytest.mark.parametrize("size", [(28, 28), (40, 56), (61, 33)])
def test_image_encoder_equals_diffusers_encode_image(model, pipe, size):
    ref = model[1]
    picture = _picture(*size)
    want = ref.encode_image(picture, torch.device("cpu"))  # CLIPVisionModel hidden_states[-2]
    got = pipe.image_encoder(picture)
    assert got.shape == want.shape == (1, 5, 1280)
    assert _max_diff(got, want) <= 1e-5


def test_original_clip_preprocesses_as_wan_does(model, original):
    """Wan's CLIPModel.visual: the picture in [-1, 1], bicubic to 224 (here 28) without a crop, back
    to [0, 1], normalised; then the tower's 31st of 32 layers (here the 1st of 2)."""
    ref = model[1]
    picture = _picture(40, 56)
    x = torch.from_numpy(np.array(picture)).permute(2, 0, 1)[None].float() / 255  # (1, 3, 40, 56)
    x = F.interpolate(x.sub(0.5).div(0.5), size=(28, 28), mode="bicubic", align_corners=False).mul(0.5).add(0.5)
    x = (x - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        want = ref.image_encoder(pixel_values=x, output_hidden_states=True).hidden_states[-2]
    got = original[1].image_encoder(picture)
    assert _max_diff(got, want) <= 1e-5
    # diffusers' processor crops the centre instead: another picture of the same file
    assert _max_diff(got, ref.encode_image(picture, torch.device("cpu"))) > 1e-2


def test_original_clip_refuses_pickled_code_and_unknown_keys(original, tmp_path):
    from tests.helpers import Evil

    path = tmp_path / "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
    torch.save({"visual.patch_embedding.weight": torch.zeros(1), "evil": Evil()}, path)
    with pytest.raises(CheckpointError) as e:
        CLIPImageEncoder.from_wan_original(path)
    assert "\n" not in str(e.value)
    torch.save({"visual.patch_embedding.weight": torch.zeros(1280, 3, 14, 14), "visual.something_else": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match=r"not known to the wan-original-clip key map.*visual.something_else"):
        CLIPImageEncoder.from_wan_original(path)


# ------------------------------------------------------------------------------------------------
# The pipeline
# ------------------------------------------------------------------------------------------------
def test_whole_pipeline_matches_diffusers_with_guidance(model, pipe):
    ref = model[1]
    picture = _picture(32, 32)  # at the clip's size: no resize on either side
    kw = dict(prompt=PROMPT, negative_prompt=NEGATIVE, guidance_scale=4.0, **CALL)
    want_latents = ref(image=picture, latents=_noise(), output_type="latent", **kw).frames
    want_video = ref(image=picture, latents=_noise(), output_type="np", **kw).frames
    out = pipe(image=picture, latents=_noise(), progress_bar=False, **kw)
    assert out.latents.shape == LATENT_SHAPE
    assert _max_diff(out.latents, want_latents) <= 1e-4
    assert out.frames.dtype == np.uint8 and out.frames.shape == (1, 9, 32, 32, 3)
    assert _max_diff(out.frames, np.round(want_video * 255)) <= 1


def test_two_prompts_one_picture_and_the_same_generator_match_diffusers(model, pipe):
    ref = model[1]
    picture = _picture(32, 32, seed=3)
    kw = dict(prompt=[PROMPT, "a blue square moving up"], guidance_scale=3.0, **CALL)
    want = ref(image=picture, generator=torch.Generator().manual_seed(5), output_type="latent", **kw).frames
    got = pipe(image=picture, generator=torch.Generator().manual_seed(5), output_type="latent", progress_bar=False, **kw)
    assert got.latents.shape == (2, *LATENT_SHAPE[1:]) and _max_diff(got.latents, want) <= 1e-4


def test_the_picture_steers_the_clip_and_frame_zero_follows_it(pipe):
    kw = dict(prompt=PROMPT, guidance_scale=1.0, output_type="latent", progress_bar=False, **CALL)
    a = pipe(image=_picture(32, 32, seed=1), latents=_noise(), **kw).latents
    b = pipe(image=_picture(32, 32, seed=2), latents=_noise(), **kw).latents
    assert _max_diff(a, b) > 1e-3
    # the condition: mask ones on latent frame 0 only, then the picture's normalised latents
    frame0 = torch.from_numpy(np.array(_picture(32, 32, seed=1))).permute(2, 0, 1)[None].float() / 127.5 - 1
    cond = pipe.image_condition(frame0, 9)
    assert cond.shape == (1, 4 + 16, 3, 4, 4)
    assert torch.equal(cond[:, :4, 0], torch.ones(1, 4, 4, 4)) and torch.equal(cond[:, :4, 1:], torch.zeros(1, 4, 2, 4, 4))


def test_batched_guidance_and_precomputed_image_features_give_the_same_clip(pipe):
    picture = _picture(32, 32, seed=6)
    kw = dict(prompt=[PROMPT, "a blue square moving up"], guidance_scale=3.0, output_type="latent", progress_bar=False, **CALL)
    noise = _noise((2, *LATENT_SHAPE[1:]))
    plain = pipe(image=picture, latents=noise, **kw).latents
    assert _max_diff(pipe(image=picture, latents=noise, batch_cfg=True, **kw).latents, plain) <= 1e-5
    features = pipe.image_encoder(picture)
    assert torch.equal(pipe(image=picture, image_embeds=features, latents=noise, **kw).latents, plain)
    # one picture per prompt, two videos each: prompt-major, every video of a prompt from its picture
    two = pipe(image=[picture, _picture(32, 32, seed=8)], num_videos_per_prompt=2, seed=3, **kw).latents
    assert two.shape == (4, *LATENT_SHAPE[1:]) and not torch.equal(two[0], two[2])


def test_original_layout_gives_the_same_video(pipe, original):
    """The same weights in the original Wan 2.1 release layout: a picture at CLIP's own size, where
    both preprocessings leave it unchanged, gives the same clip."""
    root, orig = original
    # no scheduler file: Wan's rule, shift 3 at 480p and below, 5 above (720p)
    assert (orig.sampler.for_size(480, 832).shift, orig.sampler.for_size(720, 1280).shift) == (3.0, 5.0)
    assert orig.sampler.for_size(32, 32).shift == 3.0 and pipe.sampler.for_size(720, 1280).shift == 3.0
    # and Wan's own negative prompt when a call gives none, as Wan's I2V does (diffusers': none)
    from kinema.checkpoints.wan import ORIGINAL_NEGATIVE_PROMPT

    assert orig.defaults.negative_prompt == ORIGINAL_NEGATIVE_PROMPT and pipe.defaults.negative_prompt is None
    kw = dict(prompt=PROMPT, negative_prompt=NEGATIVE, guidance_scale=4.0, **CALL)
    picture = _picture(28, 28, seed=4)
    a = orig(image=picture, latents=_noise(), progress_bar=False, **kw)
    b = pipe(image=picture, latents=_noise(), progress_bar=False, **kw)
    assert _max_diff(a.latents, b.latents) <= 1e-4 and np.abs(a.frames.astype(int) - b.frames).max() <= 1


def test_wan_size_rule_from_the_pictures_aspect_ratio(pipe):
    rules = pipe.rules  # the default area: 480 x 832
    assert rules.size_for_image(480, 480) == (624, 624)
    assert rules.size_for_image(1080, 1920) == (464, 832)  # what Wan 2.1 gives a 16:9 picture at 480p
    assert rules.size_for_image(1920, 1080) == (832, 464)
    assert rules.size_for_image(10, 4000) == (16, 12624)  # never below one multiple (the width then as Wan computes it)
    small = WanImageToVideoPipeline(pipe.transformer, pipe.codec, pipe.text_encoder, pipe.sampler,
                                    defaults=WanI2VDefaults(height=32, width=32, num_frames=9, num_inference_steps=2),
                                    image_encoder=pipe.image_encoder)  # fmt: skip
    out = small(image=_picture(20, 40), prompt=PROMPT, guidance_scale=1.0, progress_bar=False)
    assert out.frames.shape == (1, 9, 16, 32, 3)  # area 1,024 at 1:2: 16 x 32
    # another area (Wan's 720p models use 720 x 1280): here 512 pixels at 1:2
    assert small(image=_picture(20, 40), prompt=PROMPT, guidance_scale=1.0, max_area=512, progress_bar=False).frames.shape == (1, 9, 16, 32, 3)
    assert small.rules.size_for_image(720, 1280, 720 * 1280) == (720, 1280)
    # a size given is the clip's: the picture is scaled to cover it and centre-cropped
    assert small(image=_picture(20, 40), prompt=PROMPT, guidance_scale=1.0, height=32, width=32, progress_bar=False).frames.shape == (1, 9, 32, 32, 3)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"image": None}, r"image-to-video needs image="),
        ({"image": np.zeros((4, 4), dtype=np.uint8)}, r"image must be \(H, W, 3\)"),
        ({"image": [np.zeros((8, 8, 3), dtype=np.uint8)] * 2}, r"got 2 images for 1 prompts"),
        ({"height": 32, "width": None}, r"give both height and width, or neither"),
        ({"height": 40}, r"height must be a positive multiple of 16"),
        ({"strength": 0.5}, r"strength applies to video-to-video"),
        ({"image": [_picture(32, 32), _picture(16, 32)], "prompt": [PROMPT, PROMPT]}, r"the images of a list must have one size; got 32x32, 32x16"),
        ({"image_embeds": torch.zeros(1, 5, 8)}, r"image_embeds \(pictures, tokens, 1280\)"),
        ({"max_area": 1024}, r"give max_area \(the size from the picture\) or height and width, not both"),
        ({"height": None, "width": None, "max_area": 0}, r"max_area must be a positive integer"),
        ({"height": None, "width": None, "max_area": 2.5}, r"max_area must be a whole number"),
    ],
)
def test_bad_arguments_raise_one_line_errors(pipe, kwargs, message):
    call = dict(prompt=PROMPT, image=_picture(32, 32), guidance_scale=2.0, progress_bar=False, **CALL)
    call.update(kwargs)
    with pytest.raises(KinemaError, match=message) as e:
        pipe(**call)
    assert "\n" not in str(e.value)


def test_the_request_api_needs_a_picture_and_reads_it(model, tmp_path):
    from kinema.generation import generate
    from kinema.request import GenerationRequest

    with pytest.raises(KinemaError, match=r"makes a clip from a picture: give image") as e:
        generate(GenerationRequest(prompt=PROMPT, model=str(model[0]), output=str(tmp_path / "a.mp4")))
    assert "\n" not in str(e.value)
    bad = tmp_path / "not-a-picture.png"
    bad.write_bytes(b"this is no image")
    with pytest.raises(KinemaError, match=r"could not read image") as e:
        generate(GenerationRequest(prompt=PROMPT, model=str(model[0]), image=str(bad), output=str(tmp_path / "b.mp4")))
    assert "\n" not in str(e.value) and not (tmp_path / "b.mp4").exists()


def test_missing_clip_file_of_the_original_layout_is_one_line(original, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(original[0], copy)
    (copy / "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth").unlink()
    with pytest.raises(CheckpointError, match=r"missing component 'image_encoder'") as e:
        detect_layout(copy)
    assert "\n" not in str(e.value)


class TestWanI2VPipelineContract(PipelineContract):
    """tests/contracts.py: the same video for the same seed, progress and cancellation."""

    call = dict(prompt=PROMPT, image=_picture(32, 32, seed=7), guidance_scale=3.0, **CALL)
    stages = (("text", 1), ("image", 2), ("denoise", CALL["num_inference_steps"]), ("decode", 1))


def test_cli_makes_a_clip_from_a_picture_and_refuses_without_one(model, tmp_path, capsys):
    from kinema.cli import main
    from kinema.video import read_video

    picture = tmp_path / "first.png"
    _picture(48, 64, seed=9).save(picture)
    out = tmp_path / "clip.mp4"
    common = ["generate", PROMPT, "--model", str(model[0]), "--frames", "9", "--steps", "2", "--guidance", "2"]
    assert main([*common, "--image", str(picture), "--size", "32x32", "-o", str(out)]) == 0
    frames, fps = read_video(out)
    assert frames.shape == (9, 32, 32, 3) and fps == 16
    assert main([*common, "--image", str(picture), "--max-area", "32x32", "-o", str(tmp_path / "area.mp4")]) == 0
    assert read_video(tmp_path / "area.mp4")[0].shape == (9, 16, 32, 3)  # 1,024 pixels at 3:4: 16 x 32
    capsys.readouterr()
    assert main([*common, "-o", str(tmp_path / "none.mp4")]) == 2
    err = capsys.readouterr().err
    assert "give --image" in err and err.count("\n") == 1 and not (tmp_path / "none.mp4").exists()
    # --size auto (or no --size): Wan's rule from the picture, here 544 x 720 at the 480 x 832 area,
    # more than this tiny model's positions cover (512 pixels a side), which says so in one line
    assert main([*common, "--image", str(picture), "--size", "auto", "-o", str(tmp_path / "auto.mp4")]) == 2
    err = capsys.readouterr().err
    assert "got 544x720" in err and err.count("\n") == 1
