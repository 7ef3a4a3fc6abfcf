"""Shared fixtures: tiny random models (built offline) and small generated videos."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # an accidental download fails loudly
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

if not torch.cuda.is_available():  # Triton kernels run in the CPU interpreter; this must be set
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton (transformers does)


@pytest.fixture(scope="session")
def tokenizer():
    from fvlm.tiny import tiny_tokenizer

    return tiny_tokenizer()


@pytest.fixture
def make_model(tokenizer):
    """make_model(seed=0, **config) -> a tiny FoveatedVLM/MultiTokenVLM in eval mode."""
    from fvlm.tiny import tiny_model

    def make(seed: int = 0, **kw):
        return tiny_model(seed=seed, tokenizer=tokenizer, **kw)

    return make


def write_video(path, frames: np.ndarray, fps: float = 8.0) -> str:
    """Write RGB uint8 frames [T, H, W, 3] as an mp4 (OpenCV mp4v)."""
    import cv2

    T, H, W, _ = frames.shape
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (W, H))
    assert writer.isOpened()
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    return str(path)


@pytest.fixture
def video_file(tmp_path):
    """An 8-second, 8-fps, 48x64 clip of a moving square over noise."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 60, size=(64, 48, 64, 3), dtype=np.uint8)
    for t in range(64):
        x = 4 + t * 40 // 64
        frames[t, 16:32, x : x + 16] = (255, 40, 40)
    return write_video(tmp_path / "clip.mp4", frames)


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def one_thread():
    """Tiny models: one intra-op thread is several times faster than several. Modules that train
    in-process use it with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
