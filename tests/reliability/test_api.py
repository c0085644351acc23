"""The Python API with bad arguments: a KinemaError in one line for each, never a TypeError,
ValueError or AttributeError from deep inside, and nothing written."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kinema
from kinema.errors import KinemaError
from kinema.request import GenerationRequest

from .conftest import assert_api_refuses

FAST = dict(num_inference_steps=1, num_frames=1, progress_bar=False)


@pytest.fixture(scope="module")
def pipe():
    return kinema.load_pipeline("shapes")


@pytest.fixture(scope="module")
def ar_pipe():
    return kinema.load_pipeline("shapes-ar")


@pytest.mark.parametrize(
    "args, kwargs, pattern",
    [
        ((None,), {}, "load_pipeline needs a model"),
        ((123,), {}, "model"),
        (("no-such-model",), {}, "neither a model directory nor a shipped model"),
        (("",), {}, "model"),
        (("shapes",), {"device": "meta"}, "not one kinema runs on"),
        (("shapes",), {"device": 3.5}, "device"),
        (("shapes",), {"dtype": "int7"}, "unknown dtype"),
        (("shapes",), {"dtype": torch.int8}, "dtype"),
        (("shapes",), {"quantize": "fp8"}, "token-ar"),
        (("shapes",), {"max_memory": "lots"}, "max_memory must be a size"),
        (("shapes",), {"max_memory": -1}, "max_memory must be a positive size"),
        (("shapes",), {"max_memory": [8]}, "max_memory must be a size"),
        (("shapes",), {"max_memory": "1MiB"}, "needs at least about .* the budget is 1 MiB"),
        (("shapes",), {"offload": "disk"}, "offload must be one of"),
        (("shapes",), {"offload": 2}, "offload must be one of"),
    ],
)
def test_load_pipeline_refuses(args, kwargs, pattern):
    assert_api_refuses(lambda: kinema.load_pipeline(*args, **kwargs), pattern)


CALL_CASES = [
    (dict(prompt=None), "exactly one of prompt= and prompt_embeds="),
    (dict(prompt=123), "prompt must be a string"),
    (dict(prompt=[]), "prompt must be a string or a non-empty list"),
    (dict(prompt=["a red circle", 3]), "got an item 3"),
    (dict(prompt=[("a red circle", 17), ("a blue circle", 16)]), "is a prompt schedule: give it as prompt_schedule="),
    (dict(prompt="  "), "prompt is empty"),
    (dict(negative_prompt=5), "negative_prompt"),
    (dict(num_frames=True), "num_frames must be a whole number; got True"),
    (dict(num_frames=1.5), "num_frames must be a whole number"),
    (dict(num_frames=0), "num_frames must be a positive integer"),
    (dict(height="64"), "height must be a whole number"),
    (dict(width=-16), "width must be a positive integer"),
    (dict(num_inference_steps=0), "num_inference_steps must be a positive integer"),
    (dict(guidance_scale=float("nan")), "guidance_scale must be a finite number"),
    (dict(guidance_scale="5"), "guidance_scale must be a finite number"),
    (dict(shift=-1.0), "shift must be a finite number"),
    (dict(sampler="ddim"), "sampler"),
    (dict(seed=2**70), "seed must be a whole number from 0 to 2\\*\\*64 - 1"),
    (dict(seed=-1), "seed must be a whole number"),
    (dict(seed=1.5), "seed must be a whole number"),
    (dict(seed=0, generator=torch.Generator().manual_seed(0)), "either generator= or seed="),
    (dict(generator="seed-me"), "generator must be a torch.Generator"),
    (dict(generator=[torch.Generator(), torch.Generator()]), "2 generators for a batch of 1"),
    (dict(prompt=None, prompt_embeds=torch.zeros(1, 4, 7)), "prompt_embeds .* must have shape"),
    (dict(prompt=None, prompt_embeds=torch.zeros(4, 7)), "prompt_embeds .* must have shape"),
    (dict(prompt=None, prompt_embeds="states"), "prompt_embeds .* must be a torch tensor"),
    (dict(latents=torch.zeros(1, 2, 3)), "latents .* must have shape"),
    (dict(callback=3), "callback must be callable"),
    (dict(callback_on_step_end="print"), "callback_on_step_end must be callable"),
    (dict(num_inference_step=2), "takes no argument 'num_inference_step'; did you mean num_inference_steps"),
    (dict(output_type="gif"), "output_type must be 'np', 'pt' or 'latent'"),
    (dict(progress_bar="yes"), "progress_bar must be true or false"),
    (dict(batch_cfg="yes"), "batch_cfg must be true or false"),
    (dict(num_videos_per_prompt=0), "num_videos_per_prompt must be a whole number from 1"),
    (dict(temperature=0.5), "temperature"),
    (dict(image="first.png"), "image needs a model that does image-to-video"),
    (dict(image=np.zeros((64, 64, 3), np.uint8)), "image needs a model that does image-to-video"),
    (dict(video=np.zeros((9, 64, 64, 3), np.uint8)), "video needs a model that does video-to-video"),
    (dict(output="clip.mp4"), "takes no argument 'output'"),
]


@pytest.mark.parametrize("kwargs, pattern", CALL_CASES, ids=lambda v: repr(v)[:50] if isinstance(v, dict) else None)
def test_diffusion_call_refuses(pipe, kwargs, pattern):
    call = {"prompt": "a red circle moving left", **FAST, **kwargs}
    assert_api_refuses(lambda: pipe(**call), pattern)


def test_nan_prompt_states_and_latents_are_refused(pipe):
    states = torch.full((1, 4, pipe.text_dim), float("nan"))
    assert_api_refuses(lambda: pipe(prompt_embeds=states, **FAST), "NaN or infinite")
    side = 64 // pipe.vae_scale_factor_spatial
    shape = (1, pipe.transformer.config.out_dim, 1, side, side)
    assert_api_refuses(lambda: pipe("a red circle", latents=torch.full(shape, float("inf")), height=64, width=64, **FAST), "NaN or infinite")


LTX_CASES = [
    (dict(image="first.png"), "expected an image"),
    (dict(image=np.zeros((4, 4), np.uint8)), "image must be \\(H, W, 3\\)"),
    (dict(image=np.full((32, 32, 3), np.nan)), "image holds NaN"),
    (dict(image=np.zeros((0, 0, 3), np.uint8)), "image has no pixels"),
    (dict(image=np.zeros((2, 32, 32, 3), np.uint8)), "got 2 images for 1 prompts"),
    (dict(video=np.zeros((3, 32, 32), np.uint8)), "video must be frames"),
    (dict(video=np.zeros((9, 0, 32, 3), np.uint8)), "video has no pixels"),
    (dict(video=np.zeros((9, 32, 32, 3), np.uint8), image=np.zeros((32, 32, 3), np.uint8)), "not both"),
    (dict(video=np.zeros((9, 32, 32, 3), np.uint8), strength=1.5), "strength must be a finite number in \\(0, 1\\]"),
    (dict(strength=0.5), "strength= applies to video-to-video"),
    (dict(frame_rate=0), "frame_rate must be a finite number"),
    (dict(frame_rate=float("nan")), "frame_rate must be a finite number"),
    (dict(decode_timestep="x"), "decode_timestep must be a number in \\[0, 1\\]"),
    (dict(decode_noise_scale=-1), "decode_noise_scale must be a number in \\[0, 1\\]"),
    (dict(decode_timestep=[0.1, 0.2]), "decode_timestep needs 1 value or one per video"),
    (dict(guidance_rescale=2), "guidance_rescale must be a finite number in \\[0, 1\\]"),
    (dict(max_sequence_length=0), "max_sequence_length must be a whole number from 1 to"),
    (dict(max_sequence_length=10**9), "max_sequence_length must be a whole number from 1 to"),
    (dict(prompt=None, prompt_embeds=torch.zeros(1, 4, 32), prompt_attention_mask=torch.ones(2, 4)), "attention mask of prompt_embeds"),
    (dict(negative_prompt_embeds=torch.zeros(2, 4, 32), guidance_scale=3.0), "negative_prompt_embeds has batch 2"),
    (dict(callback_on_step_end_tensor_inputs=["foo"]), "may name only 'latents'"),
    (dict(num_frames=10), "8k\\+1"),
    (dict(height=48), "multiple of 32"),
]


@pytest.fixture(scope="module")
def ltx_pipe(tiny_ltx_dir):
    return kinema.load_pipeline(tiny_ltx_dir)


@pytest.mark.parametrize("kwargs, pattern", LTX_CASES, ids=lambda v: repr(v)[:50] if isinstance(v, dict) else None)
def test_ltx_call_refuses(ltx_pipe, kwargs, pattern):
    call = {"prompt": "a red circle", "height": 32, "width": 32, "num_frames": 9, "num_inference_steps": 2, "progress_bar": False, **kwargs}
    assert_api_refuses(lambda: ltx_pipe(**call), pattern)


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(temperature=-1.0), "temperature must be a finite number >= 0"),
        (dict(top_k=1.5), "top_k must be a whole number"),
        (dict(top_p=0.0), "top_p must be a probability mass"),
        (dict(typical_p=float("nan")), "typical_p must be a probability mass"),
        (dict(num_inference_steps=4), "num_inference_steps does not apply"),
        (dict(use_cache="yes"), "use_cache must be true or false"),
        (dict(height=32, width=32), "height and width must be 64 and 64"),
        (dict(temprature=1.0), "did you mean temperature"),
        (dict(callback=object()), "callback must be callable"),
    ],
)
def test_token_call_refuses(ar_pipe, kwargs, pattern):
    assert_api_refuses(lambda: ar_pipe("a red circle", num_frames=1, progress_bar=False, **kwargs), pattern)


_CLIP = np.zeros((9, 64, 64, 3), np.uint8)
EXTEND_CASES = [
    (dict(video="in.mp4"), "video is a path .*read_video"),
    (dict(video=_CLIP[:0]), "video has no frames"),
    (dict(video=_CLIP[0]), "video must be frames \\(F, H, W, 3\\)"),
    (dict(video=_CLIP.transpose(0, 3, 1, 2)), "channels last"),
    (dict(video=np.full((9, 64, 64, 3), 2.0, np.float32)), "uint8 or float in \\[0, 1\\]"),
    (dict(video=np.full((9, 64, 64, 3), np.nan, np.float32)), "NaN or infinite"),
    (dict(video=np.stack([_CLIP, _CLIP])), "extend continues one video"),
    (dict(video=[_CLIP[0], _CLIP[0, :32]]), "frames of a video must all have the same size"),
    (dict(video=_CLIP, overlap=13), "overlap is 13 frames but the video has 9"),
    (dict(video=_CLIP, overlap=4), "overlap must be 4k\\+1"),
    (dict(video=_CLIP, num_frames=5), "multiple of 4 for this model when extending"),
    (dict(video=_CLIP, height=32), "extend takes its size from the video"),
    (dict(video=np.zeros((9, 72, 72, 3), np.uint8)), "the video is 72x72; this model makes .*frames.*: resize it first"),
    (dict(video=np.zeros((9, 64, 40, 3), np.uint8)), "the video is 40x64; this model makes .*frames.*: resize it first"),
]


@pytest.mark.parametrize("model", ["pipe", "ar_pipe"])
@pytest.mark.parametrize("kwargs, pattern", EXTEND_CASES, ids=lambda v: repr(v)[:40] if isinstance(v, dict) else None)
def test_extend_refuses(model, kwargs, pattern, request):
    """Both families' ``extend`` refuse a bad video or count in one line, before sampling."""
    pipe = request.getfixturevalue(model)
    call = {"prompt": "a red circle moving right", "num_frames": 4, "progress_bar": False, **kwargs}
    assert_api_refuses(lambda: pipe.extend(**call), pattern)


@pytest.mark.parametrize(
    "source, pattern",
    [
        ("{", "not valid JSON|JSON"),
        ("[1, 2]", "JSON object"),
        ('{"prompt": "a", "steps": 3}', "steps"),
        ('{"prompt": "a", "seed": "zero"}', "seed"),
        ('{"prompt": "a", "num_frames": 2.5}', "num_frames"),
    ],
)
def test_request_json_refuses(source, pattern):
    assert_api_refuses(lambda: GenerationRequest.from_json(source).checked_alone(), pattern)


def test_generate_refuses_what_is_not_a_request(tmp_path):
    assert_api_refuses(lambda: kinema.generate({"prompt": "a red circle"}), "GenerationRequest")
    request = GenerationRequest("a red circle", output=str(tmp_path), num_inference_steps=1)
    assert_api_refuses(lambda: kinema.generate(request, progress_bar=False), "must end in .mp4|is a folder", out_dir=tmp_path)


def test_cancelled_call_writes_nothing(tmp_path):
    def stop(progress):
        if progress.stage == "denoise" and progress.step == 1:
            raise kinema.Cancelled("stop")

    request = GenerationRequest("a red circle", output=str(tmp_path / "a.mp4"), num_inference_steps=3)
    with pytest.raises(kinema.Cancelled):
        kinema.generate(request, progress_bar=False, callback=stop)
    assert list(tmp_path.iterdir()) == []


def test_errors_are_kinema_errors_not_value_errors_from_inside(pipe):
    """The API's contract: KinemaError derives from ValueError, so callers can catch either; the
    point is that the message is kinema's own (checked above), never an internal one."""
    assert issubclass(KinemaError, ValueError)
